"""Built-in vcrd judges (a separate distribution using only the public plugin API)."""
