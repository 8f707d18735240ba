"""The read API and customer-success dashboard (`healthscore api`)."""
