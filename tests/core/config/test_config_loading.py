"""Loading configs: defaults, extends, --set, the resolved view and the JSON Schema."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, ClassVar

import jsonschema
import pytest
import torch
import yaml
from pydantic import BaseModel, ConfigDict

import vcrd_core
from tests.conftest import MINIMAL_CONFIG, ROOT, run_vcrd
from vcrd_core.config.loader import iter_components, load_config, resolved_dict, validate_components
from vcrd_core.config.schema import config_schema

EXAMPLES = ROOT / "examples" / "configs"


def test_minimal_config_gets_the_papers_defaults(write_config) -> None:
    config = load_config(write_config(MINIMAL_CONFIG))
    assert config.scoring.mode == "online"
    assert config.objective.reduction == "sequence_mean"
    assert config.objective.teacher_prefix.divergence.name == "skl"
    assert config.objective.student_prefix.divergence.name == "srkl"
    assert config.weighting.name == "ratio"
    lora = config.training.lora
    assert (lora.r, lora.alpha, lora.dropout) == (16, 128, 0.05)
    assert config.proposals.teacher == config.proposals.student == "sample"


def test_extends_merges_and_a_swapped_component_drops_the_old_params(write_config) -> None:
    write_config(
        {
            **MINIMAL_CONFIG,
            "objective": {"teacher_prefix": {"lambda": 2, "divergence": {"name": "skl", "params": {"alpha": 0.3}}}},
        },
        name="base.yaml",
    )
    child = write_config(
        {
            "extends": "base.yaml",
            "objective": {"teacher_prefix": {"divergence": {"name": "jsd", "params": {"beta": 0.2}}}},
        },
        name="child.yaml",
    )
    config = load_config(child)
    stream = config.objective.teacher_prefix
    assert stream.lam == 2  # inherited
    assert stream.divergence.name == "jsd"
    assert stream.divergence.params == {"beta": 0.2}  # skl's alpha is not carried over to jsd


def test_extends_keeps_base_params_when_the_component_is_the_same(write_config) -> None:
    write_config(
        {**MINIMAL_CONFIG, "weighting": {"name": "log_clamp", "params": {"gamma": 0.25, "hi": 4}}}, name="base.yaml"
    )
    child = write_config(
        {"extends": "base.yaml", "weighting": {"name": "log_clamp", "params": {"hi": 3}}}, name="c.yaml"
    )
    assert load_config(child).weighting.params == {"gamma": 0.25, "hi": 3}


def test_set_overrides_values_parsed_as_yaml(write_config) -> None:
    path = write_config(MINIMAL_CONFIG)
    config = load_config(
        path,
        [
            "objective.student_prefix.lambda=1.5",
            "scoring.mode=offline",
            "training.lora.target_modules=[q_proj, v_proj]",
            "objective.teacher_prefix.divergence={name: skl, params: {alpha: 0.2}}",
        ],
    )
    assert config.objective.student_prefix.lam == 1.5
    assert config.scoring.mode == "offline"
    assert config.training.lora.target_modules == ["q_proj", "v_proj"]
    assert config.objective.teacher_prefix.divergence.params == {"alpha": 0.2}


def test_resolved_view_fills_in_every_components_defaults(write_config) -> None:
    data = resolved_dict(load_config(write_config(MINIMAL_CONFIG)))
    assert data["objective"]["teacher_prefix"]["divergence"]["params"] == {"alpha": 0.1}
    assert data["objective"]["student_prefix"]["divergence"]["params"]["detach_mixture"] is True
    assert data["weighting"]["params"] == {"eps": 1e-8}
    assert data["objective"]["teacher_prefix"]["lambda"] == 1.0


@pytest.mark.parametrize("name", ["qwen25_math_table9.yaml", "vcrd_prob.yaml"])
def test_example_configs_validate_statically(name: str) -> None:
    config = load_config(EXAMPLES / name)
    components = validate_components(config)
    assert config.training.lora.r == 16 and config.training.learning_rate == 5e-5
    assert components["objective.teacher_prefix.divergence"].params.alpha == 0.1
    # static: the placeholder model paths do not exist and were never touched
    assert not Path(config.models.teacher.path).exists()


def test_vcrd_prob_example_is_teacher_likelihood_with_log_clamp() -> None:
    components = validate_components(load_config(EXAMPLES / "vcrd_prob.yaml"))
    assert components["judge"].name == "teacher_likelihood"
    rule = components["weighting"]
    assert rule.name == "log_clamp"
    assert (rule.params.gamma, rule.params.lo, rule.params.hi) == (0.5, 0.5, 2.0)


def test_json_schema_lists_installed_components_and_accepts_the_examples() -> None:
    schema = config_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    divergences = {o["properties"]["name"]["const"] for o in schema["$defs"]["DivergenceSpec"]["oneOf"]}
    assert divergences == {"ab", "fkl", "jsd", "rkl", "skl", "skl_adaptive", "srkl", "srkl_adaptive"}
    validator = jsonschema.Draft202012Validator(schema)
    for name in ("qwen25_math_table9.yaml", "vcrd_prob.yaml"):
        data = yaml.safe_load((EXAMPLES / name).read_text())
        errors = sorted(validator.iter_errors(data), key=str)
        assert errors == [], errors[0].message if errors else ""
    bad = yaml.safe_load((EXAMPLES / "qwen25_math_table9.yaml").read_text())
    bad["objective"]["teacher_prefix"]["divergence"]["params"]["alpha"] = 3
    assert list(validator.iter_errors(bad)), "alpha = 3 must violate the exported schema"
    assert list(validator.iter_errors({"data": {"train": "x"}})), "models is required without extends"
    json.loads(json.dumps(schema, allow_nan=False))  # strict JSON: no Infinity (clamp's max default)


def test_cli_validate_show_and_schema(tmp_path: Path) -> None:
    table9 = str(EXAMPLES / "qwen25_math_table9.yaml")
    ok = run_vcrd("config", "validate", table9)
    assert ok.returncode == 0 and "valid" in ok.stdout
    shown = run_vcrd("config", "show", table9, "--set", "objective.teacher_prefix.lambda=3")
    assert shown.returncode == 0, shown.stderr
    assert yaml.safe_load(shown.stdout)["objective"]["teacher_prefix"]["lambda"] == 3.0
    out = tmp_path / "schema.json"
    exported = run_vcrd("config", "schema", "-o", str(out))
    assert exported.returncode == 0, exported.stderr
    assert json.loads(out.read_text())["title"] == "vcrd run config"


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["plugins"],
        ["config"],
        ["config", "validate"],
        ["config", "show"],
        ["config", "check"],
        ["config", "schema"],
        ["analyze"],
    ],
)
def test_every_command_has_help(args: list[str]) -> None:
    result = run_vcrd(*args, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: vcrd")


def test_constant_weights_need_no_judge(write_config) -> None:
    data = {k: v for k, v in MINIMAL_CONFIG.items() if k != "judge"}
    data["weighting"] = {"name": "clamp", "params": {"inner": {"name": "constant"}, "max": 1}}
    config = load_config(write_config(data))
    assert config.judge is None


def test_objective_is_built_from_the_config_section(write_config) -> None:
    from vcrd_core.losses.objective import Reduction, VCRDObjective

    data = {
        **MINIMAL_CONFIG,
        "objective": {
            "reduction": "token_mean",
            "temperature": 2.0,
            "teacher_prefix": {"lambda": 2, "divergence": {"name": "jsd", "params": {"beta": 0.3}}},
            "student_prefix": {"enabled": False},
        },
    }
    objective = VCRDObjective.from_config(load_config(write_config(data)).objective, vocab_size=17)
    assert list(objective.losses) == ["teacher_prefix"]
    loss = objective.losses["teacher_prefix"]
    assert (loss.lam, loss.divergence.name, loss.divergence.params.beta) == (2.0, "jsd", 0.3)
    assert (objective.reduction, objective.temperature, objective.vocab_size) == (Reduction.TOKEN_MEAN, 2.0, 17)


def test_set_swapping_a_component_drops_the_old_components_params() -> None:
    table9 = EXAMPLES / "qwen25_math_table9.yaml"
    config = load_config(table9, ["objective.teacher_prefix.divergence.name=fkl", "judge.name=teacher_likelihood"])
    assert config.objective.teacher_prefix.divergence.name == "fkl"
    assert config.objective.teacher_prefix.divergence.params == {}  # skl's alpha is gone
    assert config.judge is not None and config.judge.params == {}  # the PRM's path is gone


def test_set_into_a_default_component_starts_from_that_component(write_config) -> None:
    config = load_config(
        write_config(MINIMAL_CONFIG),
        ["objective.teacher_prefix.divergence.params.alpha=0.2", "weighting.params.eps=1e-6"],
    )
    assert config.objective.teacher_prefix.divergence.name == "skl"
    assert config.objective.teacher_prefix.divergence.params == {"alpha": 0.2}
    assert (config.weighting.name, config.weighting.params) == ("ratio", {"eps": 1e-6})


def test_set_a_judge_where_the_file_has_none(write_config) -> None:
    data = {**MINIMAL_CONFIG, "judge": None, "weighting": {"name": "constant"}}
    assert load_config(write_config(data), ["judge.name=oracle"]).judge.name == "oracle"


def test_nested_components_are_resolved_and_recorded(write_config) -> None:
    from vcrd_core.runs.provenance import component_providers

    data = {**MINIMAL_CONFIG, "weighting": {"name": "clamp", "params": {"inner": {"name": "log_clamp"}, "max": 1}}}
    config = load_config(write_config(data))
    resolved = resolved_dict(config)["weighting"]["params"]
    assert resolved["inner"]["params"]["gamma"] == 0.5  # the inner rule's defaults are filled in
    assert resolved["inner"]["params"]["inner"] == {"name": "ratio", "params": {"eps": 1e-8}}
    providers = component_providers(config)
    assert providers["weighting.params.inner"]["name"] == "log_clamp"
    assert providers["weighting.params.inner.params.inner"]["plugin"] == "vcrd-weighting"


class CountedLeaf(vcrd_core.WeightingRule):
    """w = r_s; counts its constructions (test rule)."""

    name: ClassVar[str] = "test_counted_leaf"
    built: ClassVar[int] = 0

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self, params: BaseModel | None = None) -> None:
        super().__init__(params)
        type(self).built += 1

    def weight(self, r_student: torch.Tensor, r_teacher: torch.Tensor) -> torch.Tensor:
        return r_student.clone()


class CountedWrap(vcrd_core.WeightingRule):
    """A third-party rule around an inner one, taking the built inner rule as the docs say (test rule)."""

    name: ClassVar[str] = "test_counted_wrap"
    built: ClassVar[int] = 0

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        inner: vcrd_core.WeightingSpec

    def __init__(self, params: BaseModel) -> None:
        super().__init__(params)
        type(self).built += 1
        self.inner = self.params.inner.built

    def weight(self, r_student: torch.Tensor, r_teacher: torch.Tensor) -> torch.Tensor:
        return self.inner.weight(r_student, r_teacher)


class CountedRules:
    @vcrd_core.hookimpl
    def vcrd_register_weighting(self) -> list[type]:
        return [CountedLeaf, CountedWrap]


def clamps(depth: int, leaf: dict[str, Any]) -> dict[str, Any]:
    """``depth`` clamps nested around ``leaf``."""
    spec = leaf
    for _ in range(depth):
        spec = {"name": "clamp", "params": {"inner": spec}}
    return spec


@pytest.fixture
def counted(register_plugin) -> type:
    register_plugin(CountedRules(), "counted-rules")
    CountedLeaf.built = CountedWrap.built = 0
    return CountedLeaf


def test_each_nested_component_is_built_exactly_once_per_load(write_config, counted) -> None:
    inner = {"name": "test_counted_wrap", "params": {"inner": clamps(1, {"name": "test_counted_leaf"})}}
    data = {**MINIMAL_CONFIG, "weighting": {"name": "clamp", "params": {"inner": inner, "max": 2}}}
    path = write_config(data)
    config = load_config(path)
    assert (CountedWrap.built, CountedLeaf.built) == (1, 1)
    instances = iter_components(config)  # a second pass builds each once more, nested ones included
    assert (CountedWrap.built, CountedLeaf.built) == (2, 2)
    by_path = dict(instances)
    nested = "weighting.params.inner"
    assert [p for p, _ in instances if p.startswith("weighting")] == [
        "weighting",
        nested,
        f"{nested}.params.inner",
        f"{nested}.params.inner.params.inner",
    ]
    # each outer component holds the very instance listed at its inner path
    assert by_path["weighting"].inner is by_path[nested]
    assert by_path[nested].inner is by_path[f"{nested}.params.inner"]
    assert by_path[f"{nested}.params.inner"].inner is by_path[f"{nested}.params.inner.params.inner"]
    assert isinstance(by_path[f"{nested}.params.inner.params.inner"], CountedLeaf)


def test_a_chain_of_eight_nested_clamps_validates_in_linear_time(write_config, counted) -> None:
    path = write_config({**MINIMAL_CONFIG, "weighting": clamps(8, {"name": "test_counted_leaf"})})
    start = time.perf_counter()
    config = load_config(path)
    elapsed = time.perf_counter() - start
    assert CountedLeaf.built == 1  # each level used to build everything below it twice: 2**8 leaves
    assert elapsed < 1.0, f"8 nested clamps took {elapsed:.2f} s to validate"
    rule = validate_components(config)["weighting"]
    assert rule.weight(torch.tensor([0.25]), torch.tensor([0.5])).tolist() == [0.25]
    leaf = "weighting" + ".params.inner" * 8
    assert resolved_dict(config)["weighting"]["params"]["inner"]["params"]["min"] == 0.0
    paths = [p for p, _ in iter_components(config) if p.startswith("weighting")]
    assert paths == ["weighting" + ".params.inner" * i for i in range(9)] and paths[-1] == leaf


def test_one_walker_follows_a_dotted_path_through_the_config_models() -> None:
    from vcrd_core.config.models import ObjectiveConfig, RunConfig, StreamConfig
    from vcrd_core.plugins.kinds import DivergenceSpec, EvaluatorSpec
    from vcrd_core.plugins.validation import walk_model

    steps = list(walk_model(RunConfig, "objective.teacher_prefix.divergence.params.alpha".split("."), defaults=True))
    assert [(s.owner, s.name) for s in steps[:3]] == [
        (RunConfig, "objective"),
        (ObjectiveConfig, "teacher_prefix"),
        (StreamConfig, "divergence"),
    ]
    assert steps[2].model is DivergenceSpec and steps[2].default == DivergenceSpec(name="skl")  # from the defaults
    assert steps[3].model is None and steps[4].owner is None  # a component's own params: below every model
    lam = list(walk_model(RunConfig, ["objective", "student_prefix", "lambda"], defaults=True))[-1]
    assert (lam.name, lam.default) == ("lam", 1.0)  # the YAML alias names the field
    index = list(walk_model(RunConfig, ["evaluation", "evaluators", "0", "name"]))
    assert index[2].is_index and index[2].model is EvaluatorSpec and index[3].owner is EvaluatorSpec
    unknown = list(walk_model(RunConfig, ["training", "lr", "x"]))
    assert unknown[1].name is None and unknown[1].owner is not None and unknown[2].owner is None


def test_a_nested_spec_is_built_by_create_even_from_params_built_by_hand() -> None:
    clamp_cls = vcrd_core.plugins.registry.get_class(vcrd_core.WEIGHTING, "clamp")
    params = clamp_cls.Params(inner={"name": "ratio", "params": {"eps": 0.5}}, max=1)
    with pytest.raises(vcrd_core.PluginError, match=r"WeightingSpec 'ratio' was not built: create the component"):
        params.inner.built  # noqa: B018
    rule = vcrd_core.create(vcrd_core.WEIGHTING, "clamp", params)
    assert rule.inner is params.inner.built and rule.inner.params.eps == 0.5
    assert params.inner == vcrd_core.WeightingSpec(name="ratio", params={"eps": 0.5})  # built or not
