"""``mc_value``: exact values with a perfect and a hopeless completer, equality with a plain loop over
continuations, deduplication and EOS handling (same values, less work), step-boundary scoring, one-line errors."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from vcrd_arithmetic.char_tokenizer import build_char_tokenizer
from vcrd_arithmetic.grammar import canonical_derivation, final_answer, random_problem

from tests.conftest import run_vcrd
from tests.core.training.helpers import BOS, EOS, encode, save_model
from tests.rollout_helpers import ascii_tokenizer, save_tiny_model
from vcrd_core import create
from vcrd_core.data.examples import Example
from vcrd_core.decision_points import DecisionPoints, Stream
from vcrd_core.errors import VcrdError
from vcrd_core.evaluation.evaluator import EvalItem
from vcrd_core.judging.judge import JudgeContext, JudgeRequest
from vcrd_core.rollouts.generator import Sampling

K = 6
EXACT = {"name": "exact", "params": {"extract": "vcrd_arithmetic.grammar:final_answer"}}


def _item(reference: str) -> EvalItem:
    return EvalItem("train", 0, "2*3+4=", reference, {})


class _Spec:
    def __init__(self, path: Path) -> None:
        self.path, self.dtype = str(path), "float32"


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(tmp_path_factory.mktemp("mc") / "teacher", 32, seed=0)


def judge_for(teacher_dir: Path, error_rate: float = 0.0, **params: Any) -> Any:
    spec = {
        "evaluator": EXACT,
        "generator": {"name": "arithmetic_solver", "params": {"error_rate": error_rate}},
        "samples": K,
        "max_new_tokens": 40,
        "seed": 11,
        **params,
    }
    judge = create("judges", "mc_value", spec)
    tok = build_char_tokenizer()
    judge.load(JudgeContext(tokenizer=tok, vocab_size=len(tok), models={"teacher": _Spec(teacher_dir)}))
    return judge


def request(responses: list[str], problems: list[str], proposals: list[list[str | None]] | None = None) -> JudgeRequest:
    """A teacher-prefix request: prompt = BOS + problem, response = the text + EOS; ``proposals[b][j]`` is the
    other model's character at response index j (None: EOS), default the rollout's own token."""
    prompts = [[BOS, *encode(p)] for p in problems]
    resp = [[*encode(r), EOS] for r in responses]
    length = max(len(p) + len(r) for p, r in zip(prompts, resp, strict=True))
    n = len(problems)
    ids = torch.zeros(n, length, dtype=torch.long)
    attn = torch.zeros(n, length, dtype=torch.long)
    response_mask = torch.zeros(n, length, dtype=torch.long)
    alt = torch.zeros(n, length, dtype=torch.long)
    for b, (p, r) in enumerate(zip(prompts, resp, strict=True)):
        ids[b, : len(p) + len(r)] = torch.tensor(p + r)
        attn[b, : len(p) + len(r)] = 1
        response_mask[b, len(p) : len(p) + len(r)] = 1
        alt[b, len(p) : len(p) + len(r)] = torch.tensor(r)
        if proposals is not None:
            for j, c in enumerate(proposals[b]):
                if j < len(r):
                    alt[b, len(p) + j] = EOS if c is None else encode(c)[0]
    examples = [Example(str(i), p, str(eval(p.rstrip("=")))) for i, p in enumerate(problems)]
    return JudgeRequest(
        stream=Stream.TEACHER_PREFIX,
        input_ids=ids,
        attention_mask=attn,
        points=DecisionPoints.from_masks(attn, response_mask),
        proposals=alt,
        prompt_lengths=torch.tensor([len(p) for p in prompts]),
        examples=examples,
    )


def test_a_perfect_completer_gives_k_plus_1_over_k_plus_2_at_valid_prefixes_and_1_over_k_plus_2_after_a_mistake(
    teacher_dir: Path,
) -> None:
    judge = judge_for(teacher_dir)
    problem = "2*3+4="
    derivation = canonical_derivation(problem)  # 6+4=10
    wrong: list[str | None] = ["7"] + [None] * len(derivation)  # a wrong digit, then EOS everywhere
    req = request([derivation], [problem], [wrong])
    scores = judge.score(req)
    points = req.points
    r_t, r_s = points.gather(scores.r_t), points.gather(scores.r_s)  # teacher prefix: rollout = r_t
    high, low = (K + 1) / (K + 2), 1 / (K + 2)
    assert torch.allclose(r_t, torch.full_like(r_t, high))
    # the student's '7' at the first response token is a wrong digit: nothing can reach the answer after it
    assert r_s[0].item() == pytest.approx(low)
    # EOS proposed before the answer is complete: graded as it is (wrong), without generation
    assert torch.allclose(r_s[1:-1], torch.full_like(r_s[1:-1], low))
    assert r_s[-1].item() == pytest.approx(high)  # the rollout's own EOS after '10'
    assert judge.stats["eos_graded"] >= 2


def test_with_a_seeded_sampler_the_estimate_equals_a_plain_loop_over_continuations(teacher_dir: Path) -> None:
    judge = judge_for(teacher_dir, error_rate=0.15)
    rng = random.Random(3)
    problems = [random_problem(rng, 3) for _ in range(3)]
    responses = [canonical_derivation(p) for p in problems]
    proposals = [[rng.choice("0123456789+=") for _ in range(len(r) + 1)] for r in responses]
    req = request(responses, problems, proposals)
    scores = judge.score(req)

    tok = build_char_tokenizer()
    generator = create("generators", "arithmetic_solver", {"error_rate": 0.15})
    from vcrd_core.rollouts.generator import GeneratorContext

    generator.load(GeneratorContext(model_path="-", tokenizer=tok, tokenizer_path="-", vocab_size=len(tok)))
    sampling = Sampling(max_new_tokens=40, n=K, seed=11)

    def value(prompt: list[int], prefix: list[int], answer: int) -> float:
        if prefix[-1] == EOS:
            good = K * float(final_answer(tok.decode(prefix, skip_special_tokens=True)) == answer)
        else:
            good = 0.0
            for sample in generator.generate([prompt + prefix], sampling)[0]:
                text = tok.decode(prefix + sample.token_ids, skip_special_tokens=True)
                good += float(final_answer(text) == answer)
        return (good + 1) / (K + 2)

    checked = 0
    for b, (problem, response) in enumerate(zip(problems, responses, strict=True)):
        prompt = [BOS, *encode(problem)]
        resp = [*encode(response), EOS]
        answer = eval(problem.rstrip("="))
        for j in range(len(resp)):
            t = len(prompt) + j
            alt = int(req.proposals[b, t])
            assert scores.r_t[b, t].item() == pytest.approx(value(prompt, resp[: j + 1], answer), abs=1e-7)
            assert scores.r_s[b, t].item() == pytest.approx(value(prompt, [*resp[:j], alt], answer), abs=1e-7)
            checked += 1
    assert checked == int(req.points.num_points)
    values = torch.cat([scores.r_t[req.points.mask], scores.r_s[req.points.mask]])
    assert len(set(values.tolist())) > 2  # the sampler is noisy: not only the two extreme values


def test_deduplication_and_eos_grading_change_no_value_only_the_work(teacher_dir: Path) -> None:
    problems = ["2*3+4=", "2*3+4=", "9-2*4="]  # two rollouts of one prompt share every prefix
    responses = [canonical_derivation(p) for p in problems]
    req = request(responses, problems)  # proposals = rollout tokens: both scores of a point share a prefix
    fast = judge_for(teacher_dir, error_rate=0.2)
    slow = judge_for(teacher_dir, error_rate=0.2, deduplicate=False)
    a, b = fast.score(req), slow.score(req)
    assert torch.equal(a.r_s, b.r_s) and torch.equal(a.r_t, b.r_t)
    points = int(req.points.num_points)
    assert fast.stats["prefixes"] == slow.stats["prefixes"] == 2 * points
    assert slow.stats["unique"] == 2 * points
    distinct = len(responses[0]) + 1 + len(responses[2]) + 1  # one prefix per token of the two distinct rollouts
    assert fast.stats["unique"] == distinct
    assert fast.stats["eos_graded"] == 2  # the two distinct rollouts' final EOS
    assert fast.stats["generated"] == distinct - 2
    assert fast.stats["continuations"] == K * (distinct - 2)
    assert slow.stats["continuations"] > 2 * fast.stats["continuations"]


def test_an_example_without_a_reference_is_one_line_not_a_silent_failure_label(teacher_dir: Path) -> None:
    judge = judge_for(teacher_dir)
    req = request(["6+4=10"], ["2*3+4="])
    req.examples = [Example("0", "2*3+4=", None)]
    with pytest.raises(VcrdError, match=r"^judge 'mc_value': an example has no reference .*data\.answer_field"):
        judge.score(req)
    assert judge.stats["continuations"] == 0


def test_a_rollout_ending_on_the_completers_other_eos_id_is_graded_as_it_is(teacher_dir: Path) -> None:
    judge = judge_for(teacher_dir)
    other = BOS  # a special id standing for a second EOS id (Qwen's <|endoftext|> beside <|im_end|>)
    judge.eos_ids = judge.eos_ids | {other}
    # "6+4=10" then the other EOS id: graded as the finished "6+4=10" (correct), with no generation
    (s,) = judge.successes([([BOS, *encode("2*3+4=")], [*encode("6+4=10"), other], _item("10"))])
    assert s == K and judge.stats["eos_graded"] == 1 and judge.stats["continuations"] == 0


def test_step_boundaries_give_every_token_of_a_step_the_value_of_its_end(teacher_dir: Path) -> None:
    problem = "2*3+4*5="
    response = canonical_derivation(problem)  # 6+4*5=6+20=26
    proposals = [["9" if j == 1 else response[j] if j < len(response) else None for j in range(len(response) + 1)]]
    req = request([response], [problem], proposals)
    stepped = judge_for(teacher_dir, error_rate=0.2, step_separator="=")
    every = judge_for(teacher_dir, error_rate=0.2)
    s, e = stepped.score(req), every.score(req)
    offset = 1 + len(problem)
    ends = [j for j, c in enumerate(response) if c == "="] + [len(response)]  # the EOS ends the last step
    for j in range(len(response) + 1):
        end = next(u for u in ends if u >= j)
        assert s.r_t[0, offset + j].item() == e.r_t[0, offset + end].item()
    assert s.r_s[0, offset + 1].item() == e.r_s[0, offset + 1].item()  # the fork '9' is scored where it forks
    assert s.r_s[0, offset + 3].item() == s.r_t[0, offset + 3].item()  # same token: same value
    assert stepped.stats["unique"] < every.stats["unique"]


# ----- one-line errors before any model loads ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("mc_cli")
    save_model(root / "teacher", 32, seed=0)
    save_model(root / "student", 16, seed=1)
    save_tiny_model(root / "ascii", seed=2, hidden_size=64)  # another tokenizer
    (root / "p.jsonl").write_text('{"prompt": "2*3=", "answer": "6"}\n')
    return {
        "root": root,
        "config": {
            "models": {
                "teacher": {"path": str(root / "teacher"), "dtype": "float32"},
                "student": {"path": str(root / "student"), "dtype": "float32"},
            },
            "data": {"train": str(root / "p.jsonl"), "template": "plain", "answer_field": "answer"},
            "judge": {"name": "mc_value", "params": {"evaluator": EXACT, "samples": 2}},
            "weighting": {"name": "ratio"},
            "output": {"dir": str(root / "out")},
        },
    }


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"data": {"answer_field": None}}, "data.answer_field is null"),
        ({"judge": {"samples": 0}}, "judge.params.samples"),
        ({"judge": {"completer": "ascii"}}, "differs from the policy tokenizer"),
        ({"judge": {"evaluator": {"name": "code"}}}, "data.tests_field is null"),
        ({"judge": {"completer": "nowhere"}}, "is not a model directory"),
    ],
)
def test_a_bad_judge_config_is_one_line_before_any_model_loads(
    cli_run: dict[str, Any], change: dict[str, Any], fragment: str
) -> None:
    root = cli_run["root"]
    config = yaml.safe_load(yaml.safe_dump(cli_run["config"]))
    for key, value in change.get("data", {}).items():
        config["data"][key] = value
    for key, value in change.get("judge", {}).items():
        config["judge"]["params"][key] = str(root / value) if key == "completer" else value
    path = root / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_vcrd("config", "check", str(path))
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error") or "judge" in line]
    assert any(fragment in line for line in lines), result.stderr
    assert "Traceback" not in result.stderr
    assert "Loading weights" not in result.stderr


def test_the_valid_config_passes_the_check(cli_run: dict[str, Any]) -> None:
    path = cli_run["root"] / "good.yaml"
    path.write_text(yaml.safe_dump(cli_run["config"]))
    result = run_vcrd("config", "check", str(path))
    assert result.returncode == 0, result.stderr


def test_ascii_tokenizer_is_really_another_vocabulary() -> None:
    assert ascii_tokenizer().get_vocab() != build_char_tokenizer().get_vocab()


def test_vcrd_score_with_an_hf_completer_fills_the_store_with_smoothed_shares(cli_run: dict[str, Any]) -> None:
    """Offline, the main mode: a real tiny teacher writes the continuations through the `hf` generator."""
    root = cli_run["root"]
    (root / "four.jsonl").write_text(
        "".join(f'{{"prompt": "{p}", "answer": "{eval(p.rstrip("="))}"}}\n' for p in ("2*3=", "4+5=", "9-1*2=", "7*1="))
    )
    config = yaml.safe_load(yaml.safe_dump(cli_run["config"]))
    config["data"] |= {"train": str(root / "four.jsonl"), "max_prompt_length": 16, "max_length": 32}
    config["rollouts"] = {"generator": {"name": "hf"}, "max_new_tokens": 8, "store": str(root / "store")}
    config["judge"]["params"] |= {"samples": 3, "max_new_tokens": 8, "generator": {"name": "hf"}}
    path = root / "score.yaml"
    path.write_text(yaml.safe_dump(config))
    assert run_vcrd("rollouts", str(path)).returncode == 0
    scored = run_vcrd("score", str(path))
    assert scored.returncode == 0, scored.stderr[-2000:]
    from vcrd_core.rollouts.store import RolloutStore

    table = RolloutStore(root / "store").read()
    values = [v for col in ("r_s", "r_t") for vs in table[col].to_pylist() for v in vs]
    assert len(values) == 2 * sum(len(r) for r in table["response_token_ids"].to_pylist()) > 0
    for v in values:  # (s + 1) / (K + 2) with an integer s in [0, K]
        s = v * 5 - 1
        assert abs(s - round(s)) < 1e-5 and 0 <= round(s) <= 3
