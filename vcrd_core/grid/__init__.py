"""``vcrd grid``: ablation grids over run configs (see :mod:`vcrd_core.grid.spec` for the file format)."""
