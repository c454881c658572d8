"""Judging: the judge interface, single-pass tree scoring for PRMs, score records and their analysis."""
