"""Run configuration: pydantic models (``models``), the YAML loader with extends, --set and file:line errors
(``loader``), pydantic errors as one-line config errors (``validation``) and the JSON Schema (``schema``).

Import the submodules directly; this package imports nothing, so the plugin registry can use
``validation`` without loading the config models.
"""
