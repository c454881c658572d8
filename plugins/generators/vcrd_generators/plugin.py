"""Entry point ``vcrd-generators``: the ``hf`` and ``vllm`` rollout generators and the on-policy mixing rules
``lambda`` and ``distillm``."""

from __future__ import annotations

import vcrd_core
from vcrd_core.rollouts.generator import Generator
from vcrd_core.rollouts.mixing import MixingRule
from vcrd_generators.hf import HFGenerator
from vcrd_generators.mixing import DistiLLMMixing, LambdaMixing
from vcrd_generators.vllm import VLLMGenerator

VCRD_PLUGIN_API = 1


@vcrd_core.hookimpl
def vcrd_register_generators() -> list[type[Generator]]:
    return [HFGenerator, VLLMGenerator]


@vcrd_core.hookimpl
def vcrd_register_mixing() -> list[type[MixingRule]]:
    return [LambdaMixing, DistiLLMMixing]
