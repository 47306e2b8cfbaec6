


	shoe_size42