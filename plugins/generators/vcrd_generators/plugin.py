"""Entry point ``vcrd-generators``: the ``hf`` and ``vllm`` rollout generators."""

from __future__ import annotations

import vcrd_core
from vcrd_core.rollouts.generator import Generator
from vcrd_generators.hf import HFGenerator
from vcrd_generators.vllm import VLLMGenerator

VCRD_PLUGIN_API = 1


@vcrd_core.hookimpl
def vcrd_register_generators() -> list[type[Generator]]:
    return [HFGenerator, VLLMGenerator]
