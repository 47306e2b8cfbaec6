
	

vip