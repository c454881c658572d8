"""Registries: in-process plugins, duplicate detection, unknown names, two-phase params validation."""

from __future__ import annotations

import re
from typing import ClassVar

import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field

import vcrd_core
from vcrd_core import ConfigError, ParamError, PluginError


class Halve(vcrd_core.WeightingRule):
    """Half the student score (test rule)."""

    name: ClassVar[str] = "test_halve"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        factor: float = Field(0.5, gt=0, le=1)

    def weight(self, r_student: torch.Tensor, r_teacher: torch.Tensor) -> torch.Tensor:
        return r_student * self.params.factor


class Picky(vcrd_core.WeightingRule):
    """Refuses factor 0.3 in its constructor (test rule)."""

    name: ClassVar[str] = "test_picky"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        factor: float = 1.0

    def __init__(self, params: BaseModel | None = None) -> None:
        super().__init__(params)
        if self.params.factor == 0.3:
            raise ParamError("factor", "0.3 is not allowed here")


class Sloppy(vcrd_core.WeightingRule):
    """Params without extra='forbid' (must be refused)."""

    name: ClassVar[str] = "test_sloppy"

    class Params(BaseModel):
        factor: float = 1.0


class FakeRules:
    @vcrd_core.hookimpl
    def vcrd_register_weighting(self) -> list[type]:
        return [Halve, Picky]


class FakeRulesAgain:
    @vcrd_core.hookimpl
    def vcrd_register_weighting(self) -> list[type]:
        return [Halve]


class FakeSloppy:
    @vcrd_core.hookimpl
    def vcrd_register_weighting(self) -> list[type]:
        return [Sloppy]


class FakeNotAComponent:
    @vcrd_core.hookimpl
    def vcrd_register_divergences(self) -> list[type]:
        return [Halve]  # a weighting rule offered as a divergence


def test_in_process_plugin_is_available_and_creatable(register_plugin) -> None:
    register_plugin(FakeRules(), "fake-rules")
    assert "test_halve" in vcrd_core.available(vcrd_core.WEIGHTING)
    rule = vcrd_core.create(vcrd_core.WEIGHTING, "test_halve", {"factor": 0.25})
    assert rule.params.factor == 0.25
    assert isinstance(rule, Halve)


def test_unregistering_a_plugin_removes_its_components(register_plugin) -> None:
    register_plugin(FakeRules(), "fake-rules")
    assert "test_halve" in vcrd_core.available(vcrd_core.WEIGHTING)
    from vcrd_core.plugins.manager import get_plugin_manager

    get_plugin_manager().unregister(name="fake-rules")
    assert "test_halve" not in vcrd_core.available(vcrd_core.WEIGHTING)


def test_duplicate_name_names_both_providers(register_plugin) -> None:
    register_plugin(FakeRules(), "fake-rules")
    register_plugin(FakeRulesAgain(), "fake-rules-again")
    with pytest.raises(PluginError, match=r"Duplicate weighting rule 'test_halve'.*fake-rules.*fake-rules-again"):
        vcrd_core.available(vcrd_core.WEIGHTING)


def test_unknown_name_suggests_closest_and_lists_available(register_plugin) -> None:
    register_plugin(FakeRules(), "fake-rules")
    with pytest.raises(ConfigError) as info:
        vcrd_core.create(vcrd_core.WEIGHTING, "test_halv", path="weighting")
    err = info.value
    assert err.path == "weighting.name"
    assert "Unknown weighting rule 'test_halv'. Did you mean 'test_halve'?" in str(err)
    assert "Available:" in str(err) and "test_picky" in str(err)


def test_params_are_validated_against_the_components_own_model(register_plugin) -> None:
    register_plugin(FakeRules(), "fake-rules")
    with pytest.raises(ConfigError) as info:
        vcrd_core.create(vcrd_core.WEIGHTING, "test_halve", {"factor": 2.0}, path="weighting")
    assert info.value.path == "weighting.params.factor"
    assert "less than or equal to 1" in info.value.message
    with pytest.raises(ConfigError, match=r"unknown key 'facter'. Did you mean 'factor'\?"):
        vcrd_core.create(vcrd_core.WEIGHTING, "test_halve", {"facter": 0.1})


def test_param_error_from_constructor_gets_the_yaml_path(register_plugin) -> None:
    register_plugin(FakeRules(), "fake-rules")
    with pytest.raises(ConfigError) as info:
        vcrd_core.create(vcrd_core.WEIGHTING, "test_picky", {"factor": 0.3}, path="objective.weighting")
    assert info.value.path == "objective.weighting.params.factor"
    assert "0.3 is not allowed" in str(info.value)


def skipped(kind: str, plugin: str) -> list[str]:
    """The one-line failures recorded for ``plugin`` and ``kind``."""
    from vcrd_core.plugins.registry import failures

    return [str(f) for f in failures(kind) if f.entry_point == plugin and f.kind == kind]


def test_params_model_without_extra_forbid_is_refused(register_plugin) -> None:
    register_plugin(FakeRules(), "fake-rules")
    register_plugin(FakeSloppy(), "fake-sloppy")
    names = vcrd_core.available(vcrd_core.WEIGHTING)  # no raise: the broken plugin is skipped, others load
    assert "test_sloppy" not in names and {"test_halve", "ratio"} <= set(names)
    assert skipped(vcrd_core.WEIGHTING, "fake-sloppy") == [
        "plugin 'fake-sloppy' (distribution <in-process>) skipped for weighting: "
        "Sloppy.Params must be a pydantic BaseModel with extra='forbid'"
    ]


def test_class_of_the_wrong_kind_is_refused(register_plugin) -> None:
    register_plugin(FakeNotAComponent(), "fake-wrong-kind")
    names = vcrd_core.available(vcrd_core.DIVERGENCES)
    assert "test_halve" not in names and "skl" in names
    (line,) = skipped(vcrd_core.DIVERGENCES, "fake-wrong-kind")
    assert line.startswith("plugin 'fake-wrong-kind' (distribution <in-process>) skipped for divergences: ")
    assert line.endswith("but it is not a subclass of Divergence") and "\n" not in line


class HalfBroken:
    """One valid class and one without a name: neither is registered (no half-registered plugin)."""

    @vcrd_core.hookimpl
    def vcrd_register_weighting(self) -> list[type]:
        class Nameless(vcrd_core.WeightingRule):
            """No name."""

        return [Halve, Nameless]


def test_a_plugin_with_one_bad_class_registers_none_of_that_kind(register_plugin) -> None:
    register_plugin(HalfBroken(), "fake-half-broken")
    assert "test_halve" not in vcrd_core.available(vcrd_core.WEIGHTING)
    assert skipped(vcrd_core.WEIGHTING, "fake-half-broken") == [
        "plugin 'fake-half-broken' (distribution <in-process>) skipped for weighting: "
        "registered Nameless without a string `name`"
    ]


def test_unknown_name_mentions_a_plugin_skipped_for_that_kind(register_plugin) -> None:
    register_plugin(FakeSloppy(), "fake-sloppy")
    with pytest.raises(ConfigError) as info:
        vcrd_core.create(vcrd_core.WEIGHTING, "test_sloppy", path="weighting")
    message = str(info.value)
    assert "Unknown weighting rule 'test_sloppy'" in message and "\n" not in message
    assert "1 plugin(s) failed to load (plugin 'fake-sloppy' (distribution <in-process>) skipped for weighting" in (
        message
    )


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(PluginError, match=r"Unknown component kind 'losses'"):
        vcrd_core.available("losses")


def test_built_in_plugins_register_through_entry_points() -> None:
    from vcrd_core.plugins.manager import get_plugin_manager, plugin_info

    infos = {plugin_info(p) for _, p in get_plugin_manager().list_name_plugin()}
    built_in = {(i.name, i.distribution) for i in infos}
    assert {("vcrd-divergences", "vcrd"), ("vcrd-weighting", "vcrd"), ("vcrd-judges", "vcrd")} <= built_in
    assert ("vcrd-arithmetic", "vcrd") in built_in


class Raising:
    @vcrd_core.hookimpl
    def vcrd_register_weighting(self) -> list[type]:
        raise RuntimeError("boom in plugin")


class NotAList:
    @vcrd_core.hookimpl
    def vcrd_register_weighting(self) -> int:
        return 3


def test_a_hook_that_raises_is_named_in_one_line(register_plugin) -> None:
    register_plugin(Raising(), "fake-raising")
    register_plugin(FakeRules(), "fake-rules")
    assert {"test_halve", "ratio"} <= set(vcrd_core.available(vcrd_core.WEIGHTING))
    (line,) = skipped(vcrd_core.WEIGHTING, "fake-raising")
    assert re.match(r"^plugin 'fake-raising' .*vcrd_register_weighting\(\) failed: RuntimeError: boom in plugin$", line)


def test_a_hook_that_returns_no_list_is_refused(register_plugin) -> None:
    register_plugin(NotAList(), "fake-not-a-list")
    assert "ratio" in vcrd_core.available(vcrd_core.WEIGHTING)
    assert skipped(vcrd_core.WEIGHTING, "fake-not-a-list") == [
        "plugin 'fake-not-a-list' (distribution <in-process>) skipped for weighting: "
        "vcrd_register_weighting() must return a list of classes, got int"
    ]


def test_a_skipped_plugin_is_forgotten_once_unregistered(register_plugin) -> None:
    from vcrd_core.plugins.manager import get_plugin_manager

    register_plugin(Raising(), "fake-raising")
    assert skipped(vcrd_core.WEIGHTING, "fake-raising")
    get_plugin_manager().unregister(name="fake-raising")
    assert not skipped(vcrd_core.WEIGHTING, "fake-raising")


def test_registry_notices_a_plugin_replaced_under_the_same_name(register_plugin) -> None:
    from vcrd_core.plugins.manager import get_plugin_manager

    register_plugin(FakeRules(), "fake-swap")
    assert "test_halve" in vcrd_core.available(vcrd_core.WEIGHTING)
    get_plugin_manager().unregister(name="fake-swap")
    register_plugin(FakeRulesOnlyPicky(), "fake-swap")
    names = vcrd_core.available(vcrd_core.WEIGHTING)
    assert "test_picky" in names and "test_halve" not in names


class FakeRulesOnlyPicky:
    @vcrd_core.hookimpl
    def vcrd_register_weighting(self) -> list[type]:
        return [Picky]


def test_every_kind_in_the_table_has_its_registration_hookspec_and_nothing_else_does() -> None:
    from vcrd_core import hookspecs
    from vcrd_core.plugins.kinds import KINDS

    registration_hooks = {name for name in vars(hookspecs) if name.startswith("vcrd_register_")}
    assert registration_hooks == {kind.hook for kind in KINDS.values()}
    from vcrd_core.evaluation.evaluator import Evaluator
    from vcrd_core.rollouts.generator import Generator
    from vcrd_core.rollouts.mixing import MixingRule

    bases = [vcrd_core.Divergence, vcrd_core.WeightingRule, vcrd_core.Judge, Evaluator, Generator, MixingRule]
    for kind, base in zip(KINDS.values(), bases, strict=True):
        assert kind.spec.kind == kind.name  # a nested {name, params} block is validated against this kind
        # the table names the base class; the base class declares the kind (the table imports none of them)
        assert issubclass(base, vcrd_core.Component) and base.__name__ == kind.base and base.kind == kind.name


def test_each_base_class_carries_its_kind_from_the_table() -> None:
    assert vcrd_core.Divergence.kind == vcrd_core.DIVERGENCES
    assert vcrd_core.WeightingRule.kind == vcrd_core.WEIGHTING
    assert vcrd_core.Judge.kind == vcrd_core.JUDGES
    assert vcrd_core.create(vcrd_core.WEIGHTING, "ratio").kind == "weighting"
