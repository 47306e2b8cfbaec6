


plan
*free*paid