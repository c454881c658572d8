"""Built-in evaluators (entry point ``vcrd-evaluators``): ``math``, ``code``, ``exact`` and ``pairwise``."""
