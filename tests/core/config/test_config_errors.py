"""Every bad input a config can have is refused with one line naming what, where and what is valid;
through the real CLI: exit code 2, no traceback."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MINIMAL_CONFIG, run_vcrd
from vcrd_core.config.loader import load_config
from vcrd_core.errors import ConfigError, VcrdError


def with_(**changes: Any) -> dict[str, Any]:
    """MINIMAL_CONFIG with dotted-path changes (value None deletes the key)."""
    data = copy.deepcopy(MINIMAL_CONFIG)
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return data


def stream(div: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"divergence": div, **extra}


CASES: list[tuple[str, Any, str]] = [
    (
        "unknown_component_name",
        with_(objective={"teacher_prefix": stream({"name": "fkll"})}),
        "objective.teacher_prefix.divergence.name: Unknown divergence 'fkll'. Did you mean 'fkl'? "
        "Available: ab, fkl, jsd, rkl, skl, skl_adaptive, srkl, srkl_adaptive.",
    ),
    (
        "unknown_key_top_level",
        with_(trainig={"learning_rate": 1e-4}),
        "trainig: unknown key 'trainig'. Did you mean 'training'?",
    ),
    (
        "unknown_key_nested",
        with_(training={"lora": {"dropuot": 0.1}}),
        "training.lora.dropuot: unknown key 'dropuot'. Did you mean 'dropout'? Valid keys: enabled, r, alpha, dropout, "
        "target_modules.",
    ),
    (
        "unknown_key_in_params",
        with_(objective={"teacher_prefix": stream({"name": "skl", "params": {"alpah": 0.2}})}),
        "objective.teacher_prefix.divergence.params.alpah: unknown key 'alpah'. Did you mean 'alpha'?",
    ),
    ("missing_required_field", with_(data={"eval": "x.jsonl"}), "data.train: missing required field 'train'"),
    (
        "wrong_type",
        with_(training={"learning_rate": "fast"}),
        "training.learning_rate: Input should be a valid number",
    ),
    (
        "alpha_outside_unit_interval",
        with_(objective={"teacher_prefix": stream({"name": "skl", "params": {"alpha": 1.5}})}),
        "objective.teacher_prefix.divergence.params.alpha: Input should be less than or equal to 1 (got 1.5)",
    ),
    (
        "negative_lambda",
        with_(objective={"student_prefix": stream({"name": "srkl"}, **{"lambda": -1})}),
        "objective.student_prefix.lambda: Input should be greater than or equal to 0 (got -1)",
    ),
    (
        "epsilon_not_positive",
        with_(weighting={"name": "ratio", "params": {"eps": 0}}),
        "weighting.params.eps: Input should be greater than 0 (got 0)",
    ),
    (
        "clamp_min_above_max",
        with_(weighting={"name": "clamp", "params": {"inner": {"name": "ratio"}, "min": 2, "max": 1}}),
        "weighting.params",
    ),
    (
        "nested_inner_rule_does_not_exist",
        with_(weighting={"name": "clamp", "params": {"inner": {"name": "ratoi"}}}),
        "weighting.params.inner.name: Unknown weighting rule 'ratoi'. Did you mean 'ratio'?",
    ),
    (
        "log_clamp_around_rule_that_can_be_nonpositive",
        with_(weighting={"name": "log_clamp", "params": {"inner": {"name": "difference"}}}),
        "weighting.params.inner:",
    ),
    (
        "judge_missing_for_a_score_based_rule",
        with_(judge=None),
        "judge: missing: the teacher_prefix stream's weighting rule 'ratio' needs judge scores",
    ),
]


@pytest.mark.parametrize(("case", "data", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_config_is_refused_with_its_yaml_path(case: str, data: Any, expected: str, write_config) -> None:
    path = write_config(data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert message.startswith(str(path)), message  # file:line of the offending key (or its parent), else file


def test_min_above_max_message_says_what_is_valid(write_config) -> None:
    path = write_config(with_(weighting={"name": "clamp", "params": {"inner": {"name": "ratio"}, "min": 2, "max": 1}}))
    with pytest.raises(ConfigError, match=r"weighting.params: min \(2.0\) must be <= max \(1.0\)$"):
        load_config(path)


def test_error_location_points_at_the_line_of_the_bad_key(write_config) -> None:
    text = """\
models:
  teacher: {path: /t}
  student: {path: /s}
data: {train: /d.jsonl}
judge: {name: teacher_likelihood}
objective:
  teacher_prefix:
    divergence:
      name: skl
      params:
        alpha: 7
"""
    path = write_config(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:11, objective.teacher_prefix.divergence.params.alpha:")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("models: [1\n", ":2:1: YAML syntax error: expected ',' or ']'"),
        ("", ": the file is empty; expected a mapping"),
        ("# only a comment\n", ": the file is empty; expected a mapping"),
        ("- models\n- data\n", ":1: the top level must be a mapping of sections, not a list"),
        ("!!python/object:os.system {}\n", "YAML syntax error: could not determine a constructor"),
    ],
    ids=["syntax", "empty", "comment_only", "list_top_level", "unsafe_tag"],
)
def test_unreadable_yaml_is_refused(text: str, expected: str, write_config) -> None:
    path = write_config(text)
    with pytest.raises(VcrdError) as info:
        load_config(path)
    assert str(info.value).startswith(str(path))
    assert expected in str(info.value)


def test_unknown_set_path_is_refused(write_config) -> None:
    path = write_config(MINIMAL_CONFIG)
    with pytest.raises(ConfigError) as info:
        load_config(path, ["objective.teacher_prefx.lambda=2"])
    assert str(info.value) == (
        "--set, objective.teacher_prefx.lambda: unknown key 'teacher_prefx' at objective. Did you mean "
        "'teacher_prefix'? Valid keys: reduction, temperature, chunk_size, weight_warn_max, compile, teacher_prefix, "
        "student_prefix."
    )


def test_set_value_that_fails_validation_names_the_override(write_config) -> None:
    path = write_config(with_(objective={"teacher_prefix": stream({"name": "skl"})}))
    with pytest.raises(ConfigError, match=r"^--set, objective.teacher_prefix.divergence.params.alpha: Input should be"):
        load_config(path, ["objective.teacher_prefix.divergence.params.alpha=-0.5"])


def test_base_file_that_does_not_exist_is_refused(write_config) -> None:
    path = write_config({"extends": "missing_base.yaml", **MINIMAL_CONFIG})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"{path}:1, extends: base file 'missing_base.yaml' does not exist" in str(info.value)


def test_config_extending_itself_is_refused(write_config) -> None:
    path = write_config({"extends": "run.yaml", **MINIMAL_CONFIG}, name="run.yaml")
    with pytest.raises(ConfigError, match=r"'run.yaml' is this file itself; a config cannot extend itself"):
        load_config(path)


def test_circular_extends_is_refused(write_config) -> None:
    write_config({"extends": "b.yaml"}, name="a.yaml")
    b = write_config({"extends": "a.yaml"}, name="b.yaml")
    with pytest.raises(ConfigError, match=r"circular extends: .*b.yaml -> .*a.yaml -> .*b.yaml"):
        load_config(b)


CLI_CASES = [CASES[0], CASES[6], CASES[10]]


@pytest.mark.parametrize(("case", "data", "expected"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_refuses_bad_config_with_one_line_and_exit_code_2(
    case: str, data: Any, expected: str, write_config
) -> None:
    path = write_config(data)
    result = run_vcrd("config", "validate", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0]
    assert result.stdout == ""


def test_cli_refuses_missing_file_and_unknown_set(tmp_path: Path, write_config) -> None:
    missing = run_vcrd("config", "validate", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"error: config file '{tmp_path / 'nope.yaml'}' does not exist"
    path = write_config(MINIMAL_CONFIG)
    bad_set = run_vcrd("config", "validate", str(path), "--set", "training.lr=1")
    assert bad_set.returncode == 2
    assert "unknown key 'lr' at training" in bad_set.stderr and "Traceback" not in bad_set.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "objective: {reduction: token_mean}\nobjective: {temperature: 2}\n",
            ":2:1: duplicate key 'objective' (first at line 1)",
        ),
        ("a: &x [1, 2]\nb: *x\n", ":2:4: alias '*x' is not supported; use extends: to share settings"),
    ],
    ids=["duplicate_key", "alias"],
)
def test_yaml_that_would_silently_mislead_is_refused(text: str, expected: str, write_config) -> None:
    path = write_config(text)
    with pytest.raises(VcrdError) as info:
        load_config(path)
    assert str(info.value) == f"{path}{expected}"


def test_config_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(VcrdError, match=r"latin.yaml: not UTF-8 text \(byte 9\)"):
        load_config(path)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (with_(seed=-1), "seed: Input should be greater than or equal to 0"),
        (with_(seed=2**40), "seed: Input should be less than 4294967296"),
        (with_(training={"learning_rate": float("inf")}), "training.learning_rate: Input should be a finite number"),
        (with_(objective={"teacher_prefix": {"lam": 2}}), "objective.teacher_prefix.lam: unknown key 'lam'"),
    ],
    ids=["negative_seed", "huge_seed", "infinite_lr", "field_name_instead_of_alias"],
)
def test_values_a_run_cannot_use_are_refused(data: Any, expected: str, write_config) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(write_config(data))


@pytest.mark.parametrize(
    ("assignment", "expected"),
    [
        ("evaluation.evaluators.0.name=x", "'0' is not an index of the 0-item list at evaluation.evaluators"),
        ("training.lora.target_modules.9=x", "'9' is not an index of the 7-item list at training.lora.target_modules"),
        ("training.lora.0=x", "--set, training.lora.0: unknown key '0'. Valid keys: enabled, r, alpha"),
        ("training.lora.r.x=1", "--set, training.lora.r.x: 'training.lora.r' holds a int, not a mapping"),
        ("judge.params.path=/x", "--set, judge.params.path: set judge.name first: there is no default component"),
    ],
    ids=[
        "index_into_missing_list",
        "index_out_of_range",
        "index_into_a_mapping",
        "into_a_scalar",
        "params_without_default",
    ],
)
def test_set_paths_that_do_not_fit_the_config_are_refused(assignment: str, expected: str, write_config) -> None:
    data = with_(judge=None, weighting={"name": "constant"})
    data["training"] = {"lora": {"target_modules": ["q", "k", "v", "o", "g", "u", "d"], "r": 8}}
    with pytest.raises(ConfigError) as info:
        load_config(write_config(data), [assignment])
    assert expected in str(info.value)


def test_set_replacing_a_list_drops_the_files_locations_inside_it(write_config) -> None:
    path = write_config(
        "models: {teacher: {path: /t}, student: {path: /s}}\ndata: {train: d}\n"
        "judge: {name: oracle}\ntraining:\n  lora:\n    target_modules: [a, b]\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, ["training.lora.target_modules=[a, 1]"])
    assert str(info.value).startswith("--set, training.lora.target_modules.1: Input should be a valid string")


def test_missing_param_of_a_component_replaced_by_extends_points_at_the_child(write_config, tmp_path: Path) -> None:
    write_config({**MINIMAL_CONFIG, "judge": {"name": "teacher_likelihood", "params": {"top_k": 5}}}, name="b.yaml")
    child = write_config("extends: b.yaml\njudge:\n  name: prm_value_head\n", name="c.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(child)
    assert str(info.value).startswith(f"{child}:2, judge.params.path: missing required field 'path'")


def test_extends_of_a_directory_names_the_extends_line(write_config, tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    path = write_config({"extends": "adir", **MINIMAL_CONFIG})
    with pytest.raises(ConfigError, match=r"run.yaml:1, extends: base 'adir' is not a file"):
        load_config(path)


def test_components_nested_beyond_the_limit_are_one_error_naming_the_yaml_path(write_config) -> None:
    from vcrd_core.plugins.registry import MAX_NESTING

    spec: dict[str, Any] = {"name": "ratio"}
    for _ in range(MAX_NESTING + 1):  # MAX_NESTING clamps around ratio validate (tests/core/config/test_config_loading)
        spec = {"name": "clamp", "params": {"inner": spec}}
    path = write_config(with_(weighting=spec))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    too_deep = "weighting" + ".params.inner" * (MAX_NESTING + 1)
    assert info.value.path == too_deep
    line = path.read_text().splitlines().index(" " * 4 * (MAX_NESTING + 1) + "inner:") + 1  # the innermost `inner:`
    assert str(info.value) == (
        f"{path}:{line}, {too_deep}: components nested more than 8 levels deep (a component in another's params "
        "is one level); flatten the rule"
    )
