"""Losses: divergence and weighting-rule bases, the memory-bounded chunked engine and the two-stream objective."""
