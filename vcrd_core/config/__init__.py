"""Run configuration: pydantic models, the YAML loader (extends, --set, file:line errors) and the JSON Schema."""

from vcrd_core.config.loader import load_config, load_raw
from vcrd_core.config.models import RunConfig

__all__ = ["RunConfig", "load_config", "load_raw"]
