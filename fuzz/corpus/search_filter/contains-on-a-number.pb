


seats1