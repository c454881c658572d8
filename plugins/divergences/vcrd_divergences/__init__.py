"""Built-in vcrd divergences (a separate distribution using only the public plugin API)."""
