"""The base of every component and the ``{name, params}`` block that declares one in YAML."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field


class Component:
    """Base of every pluggable component (divergence, weighting rule, judge, ...).

    A component class states ``name`` (its registry name), a docstring (shown by ``vcrd plugins``)
    and a nested ``Params`` pydantic model with ``extra="forbid"``. Construction is cheap and
    context-free: run-time context (tokenizer, device, accelerator) arrives later through a
    separate ``load`` step on the kinds that need one. A constructor may raise
    :class:`vcrd_core.ParamError` about one of its params; the core adds the YAML path.
    """

    name: ClassVar[str]
    #: Set on each kind's base class by the table of kinds (:mod:`vcrd_core.plugins.kinds`).
    kind: ClassVar[str]

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self, params: BaseModel | None = None) -> None:
        self.params = params if params is not None else self.Params()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, params={self.params.model_dump()!r})"


class ComponentSpec(BaseModel):
    """A component as YAML declares it: ``{name: ..., params: {...}}``.

    Each kind's subclass (:data:`vcrd_core.plugins.kinds.KINDS`, e.g. ``WeightingSpec``) fixes ``kind``,
    so that a spec nested inside another component's params (``clamp``'s ``inner``) is validated, in
    the second phase, against the right registry.
    """

    model_config = ConfigDict(extra="forbid")
    kind: ClassVar[str | None] = None

    name: str = Field(description="Registered component name (see `vcrd plugins`).")
    params: dict[str, Any] = Field(default_factory=dict, description="The component's own parameters.")
