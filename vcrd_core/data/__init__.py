"""Prompt datasets (JSONL, Parquet, or a ``datasets`` directory) rendered and tokenized for rollouts."""
