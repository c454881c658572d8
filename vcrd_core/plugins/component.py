"""The base of every component and the ``{name, params}`` block that declares one in YAML."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from vcrd_core.errors import PluginError
from vcrd_core.plugins.validation import join_path


class Component:
    """Base of every pluggable component (divergence, weighting rule, judge, ...).

    A component class states ``name`` (its registry name), a docstring (shown by ``vcrd plugins``)
    and a nested ``Params`` pydantic model with ``extra="forbid"``. Construction is cheap and
    context-free: run-time context (tokenizer, device, accelerator) arrives later through a
    separate ``load`` step on the kinds that need one. A constructor may raise
    :class:`vcrd_core.ParamError` about one of its params; the core adds the YAML path.
    """

    name: ClassVar[str]
    #: Each kind's base class declares it (``Judge.kind = "judges"``; the table: :mod:`vcrd_core.plugins.kinds`).
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

    **Nested components.** A component whose ``Params`` hold a spec (``inner: vcrd_core.WeightingSpec``)
    gets it built for it: :func:`vcrd_core.create` validates the outer params, then builds every spec
    found in them depth-first, each exactly once and with its YAML path in any error
    (``weighting.params.inner.params.eps``), and only then constructs the outer component. Its
    constructor takes the built instance from :attr:`built` (constructing nothing again)::

        def __init__(self, params: Params) -> None:
            super().__init__(params)
            self.inner = self.params.inner.built

    Equality compares ``name`` and ``params`` only, never the built instance.
    """

    model_config = ConfigDict(extra="forbid")
    kind: ClassVar[str | None] = None

    name: str = Field(description="Registered component name (see `vcrd plugins`).")
    params: dict[str, Any] = Field(default_factory=dict, description="The component's own parameters.")

    #: Set by :func:`vcrd_core.create` when it builds this (nested) spec.
    _built: Component | None = PrivateAttr(default=None)

    @property
    def built(self) -> Component:
        """The component :func:`vcrd_core.create` built from this spec, before the component holding it."""
        if self._built is None:
            raise PluginError(
                f"{type(self).__name__} '{self.name}' was not built: create the component whose params hold it "
                "with vcrd_core.create(kind, name, params), which builds nested components first"
            )
        return self._built

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ComponentSpec):
            return NotImplemented
        return type(self) is type(other) and all(getattr(self, f) == getattr(other, f) for f in type(self).model_fields)


def component_specs(value: Any, path: str = "") -> Iterator[tuple[str, ComponentSpec]]:
    """Every ``{name, params}`` block of a kind in ``value`` (a config section or a component's validated
    params), as ``(dotted YAML path, spec)`` in field order; a spec's own ``params`` is not searched (its
    nested specs are its component's, found in that component's validated params)."""
    if isinstance(value, ComponentSpec):
        if value.kind is not None:
            yield path, value
    elif isinstance(value, BaseModel):
        for name, fld in type(value).model_fields.items():
            yield from component_specs(getattr(value, name), join_path(path, fld.alias or name))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from component_specs(item, join_path(path, i))
