


seatsmany