"""Rollouts: the generator interface, the resumable Parquet rollout store and ``vcrd rollouts`` / ``vcrd score``."""
