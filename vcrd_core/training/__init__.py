"""The training engine: `vcrd train` (validity-weighted distillation) and `vcrd sft` on transformers' Trainer."""
