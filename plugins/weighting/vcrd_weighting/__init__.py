"""Built-in vcrd weighting (a separate distribution using only the public plugin API)."""
