"""The PRM judges ``prm_value_head`` and ``prm_classifier`` on tiny random Qwen2 checkpoints written to disk.

Each checkpoint is a real HF directory (``save_pretrained`` of a ``Qwen2ForCausalLM``, single-file or sharded
safetensors, the head tensors added the way Skywork / Qwen ship them, a ``tokenizers``-built tokenizer) loaded
back through ``vcrd_core.create`` + ``load``. References score every prefix alone in float64, the plain way.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Qwen2ForCausalLM, Qwen2Model, Qwen2Tokenizer

import vcrd_core
from tests.tiny_models import tiny_qwen2_config
from vcrd_core import ConfigError, DecisionPoints, JudgeContext, JudgeRequest, Stream, VcrdError
from vcrd_core.judging.judge import checked_scores

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
#: printable ASCII and newline in byte-level spelling (space is "Ġ", newline "Ċ"), as in Qwen's vocabulary
CHARS = ["Ġ" if c == " " else c for c in map(chr, range(32, 127))] + ["Ċ"]
EXTRA = "<extra_0>"  # the judge's extra token, after every policy id (Qwen2.5-Math-PRM's layout)
HIDDEN = 64
VALUE_KEYS = ("v_head.summary.weight", "v_head.summary.bias")


# ----- tiny tokenizers and checkpoints -------------------------------------------------------------------------


def make_tokenizer(tokens: list[str], chat_template: str | None = None) -> Qwen2Tokenizer:
    """A Qwen2 byte-level BPE tokenizer without merges: one token per character, specials matched whole."""
    vocab = {tok: i for i, tok in enumerate(tokens)}
    specials = [t for t in tokens if t.startswith("<") and len(t) > 1]
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], bos_token="<|endoftext|>", extra_special_tokens=specials[1:])
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok


def judge_tokens() -> list[str]:
    return [*SPECIALS, *CHARS, EXTRA]


def policy_tokenizer() -> Qwen2Tokenizer:
    return make_tokenizer([*SPECIALS, *CHARS])


def write_checkpoint(
    path: Path,
    kind: str,
    *,
    sharded: bool = False,
    seed: int = 0,
    max_positions: int = 2048,
    nan: bool = False,
    chat_template: str | None = None,
    head: bool = True,
) -> Path:
    """A PRM directory: body + LM head via save_pretrained, head tensors added, reward-model architecture name."""
    torch.manual_seed(seed)
    tokens = judge_tokens()
    config = tiny_qwen2_config(len(tokens), hidden_size=HIDDEN, max_positions=max_positions, tie_word_embeddings=False)
    model = Qwen2ForCausalLM(config)
    if nan:
        with torch.no_grad():
            model.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    model.save_pretrained(path, max_shard_size="40KB" if sharded else "5GB")
    gen = torch.Generator().manual_seed(seed + 100)
    if kind == "value_head":
        tensors = {
            "v_head.summary.weight": torch.randn(1, HIDDEN, generator=gen) * 0.5,
            "v_head.summary.bias": torch.randn(1, generator=gen) * 0.1,
        }
        architecture = "Qwen2ForPrmModel"
    else:
        tensors = {
            "score.0.weight": torch.randn(HIDDEN, HIDDEN, generator=gen) * 0.3,
            "score.0.bias": torch.randn(HIDDEN, generator=gen) * 0.1,
            "score.2.weight": torch.randn(2, HIDDEN, generator=gen) * 0.5,
            "score.2.bias": torch.randn(2, generator=gen) * 0.1,
        }
        architecture = "Qwen2ForProcessRewardModel"
    if head:
        if sharded:
            index_file = path / "model.safetensors.index.json"
            index = json.loads(index_file.read_text())
            save_file(tensors, str(path / "model-head.safetensors"), metadata={"format": "pt"})
            index["weight_map"].update(dict.fromkeys(tensors, "model-head.safetensors"))
            index_file.write_text(json.dumps(index))
        else:
            state = load_file(str(path / "model.safetensors"))
            save_file({**state, **tensors}, str(path / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((path / "config.json").read_text())
    # as the real checkpoints ship: a remote-code class name that vcrd must never import
    cfg["architectures"] = [architecture]
    cfg["auto_map"] = {"AutoModel": "modeling_prm_that_does_not_exist.Missing"}
    (path / "config.json").write_text(json.dumps(cfg))
    make_tokenizer(tokens, chat_template).save_pretrained(path)
    return path


def all_tensors(path: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


class Reference:
    """Float64, the plain way: one prefix at a time through Qwen2Model, then the head by hand."""

    def __init__(self, path: Path, kind: str) -> None:
        self.body = Qwen2Model.from_pretrained(path, dtype=torch.float64).eval()
        self.head = {k: v.double() for k, v in all_tensors(path).items() if k.startswith(("v_head", "score"))}
        self.kind = kind

    def __call__(self, tokens: list[int]) -> float:
        with torch.no_grad():
            h = self.body(input_ids=torch.tensor([tokens])).last_hidden_state[0, -1]
        if self.kind == "value_head":
            v = h @ self.head["v_head.summary.weight"][0] + self.head["v_head.summary.bias"][0]
            return float(1.0 / (1.0 + torch.exp(-v)))
        inner = torch.relu(self.head["score.0.weight"] @ h + self.head["score.0.bias"])
        logits = self.head["score.2.weight"] @ inner + self.head["score.2.bias"]
        return float(torch.softmax(logits, dim=0)[1])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("prm")
    out = {}
    for kind in ("value_head", "classifier"):
        for layout in ("single", "sharded"):
            out[f"{kind}-{layout}"] = write_checkpoint(root / f"{kind}-{layout}", kind, sharded=layout == "sharded")
    return out


@pytest.fixture(scope="module")
def references(checkpoints: dict[str, Path]) -> dict[str, Reference]:
    return {
        "value_head": Reference(checkpoints["value_head-single"], "value_head"),
        "classifier": Reference(checkpoints["classifier-single"], "classifier"),
    }


def load_judge(name: str, path: Path, *, dtype: torch.dtype = torch.float32, **params: object) -> vcrd_core.Judge:
    judge = vcrd_core.create("judges", name, {"path": str(path), **params})
    judge.load(JudgeContext(tokenizer=policy_tokenizer(), dtype=dtype))
    return judge


NAMES = {"value_head": "prm_value_head", "classifier": "prm_classifier"}


def judge_batch(padding: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Judge-format ids: three rows of unequal lengths (12, 7, 5 tokens), policy-vocabulary alternatives."""
    gen = torch.Generator().manual_seed(3)
    lengths = [12, 7, 5]
    width = max(lengths)
    n_policy = len(SPECIALS) + len(CHARS)
    ids = torch.randint(len(SPECIALS), n_policy, (3, width), generator=gen)
    alt = torch.randint(len(SPECIALS), n_policy, (3, width), generator=gen)
    mask = torch.zeros(3, width, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, width - n :] = 1 if padding == "left" else 0
        if padding == "right":
            mask[b, :n] = 1
    ids = torch.where(mask.bool(), ids, torch.zeros_like(ids))  # padding: <|endoftext|>
    score = mask.bool() & (torch.rand(3, width, generator=gen) < 0.6)
    return ids, mask, alt, score


def reference_scores(
    ref: Reference, ids: torch.Tensor, mask: torch.Tensor, alt: torch.Tensor, score: torch.Tensor, suffix: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    r_actual = torch.zeros(ids.shape, dtype=torch.float64)
    r_alt = torch.zeros(ids.shape, dtype=torch.float64)
    for b, t in score.nonzero().tolist():
        real = ids[b][mask[b].bool()].tolist()
        k = int(mask[b, :t].sum())
        r_actual[b, t] = ref([*real[:k], int(ids[b, t]), *suffix])
        r_alt[b, t] = ref([*real[:k], int(alt[b, t]), *suffix])
    return r_actual, r_alt


# ----- tree scoring equals per-prefix scoring ------------------------------------------------------------------


#: Every kind, layout, attention kernel, padding side and suffix appears; pairs are spread over the cases.
SCORING_CASES = [
    ("value_head", "single", "eager", "left", None),
    ("value_head", "sharded", "sdpa", "right", "\n"),
    ("value_head", "single", "sdpa", "left", "\n"),
    ("value_head", "sharded", "eager", "right", None),
    ("classifier", "single", "eager", "right", EXTRA),
    ("classifier", "sharded", "sdpa", "left", EXTRA),
    ("classifier", "single", "sdpa", "right", None),
    ("classifier", "sharded", "eager", "left", "\n"),
]


@pytest.mark.parametrize(("kind", "layout", "attn", "padding", "suffix"), SCORING_CASES)
def test_score_positions_equal_float64_per_prefix_scores(
    checkpoints, references, kind: str, layout: str, attn: str, padding: str, suffix: str | None
):
    judge = load_judge(NAMES[kind], checkpoints[f"{kind}-{layout}"], attn_implementation=attn, branch_suffix=suffix)
    ids, mask, alt, score = judge_batch(padding)
    suffix_ids = [] if suffix is None else judge.tokenizer.encode(suffix, add_special_tokens=False)
    assert len(suffix_ids) == (0 if suffix is None else 1)
    r_actual, r_alt = judge.score_positions(ids, mask, alt, score)
    ref_actual, ref_alt = reference_scores(references[kind], ids, mask, alt, score, suffix_ids)
    assert r_actual.dtype == torch.float32
    assert float((r_actual.double() - ref_actual).abs().max()) <= 1e-5
    assert float((r_alt.double() - ref_alt).abs().max()) <= 1e-5
    assert bool((r_actual[~score] == 0).all()) and bool((r_alt[~score] == 0).all())
    # the scores must actually vary, or agreement would prove little
    assert float(ref_alt[score].std()) > 1e-3


def test_default_score_mask_scores_every_real_token_with_a_kv_cache_in_blocks(checkpoints, references):
    judge = load_judge("prm_value_head", checkpoints["value_head-sharded"], positions_per_pass=3)
    ids, mask, alt, _ = judge_batch("left")
    r_actual, r_alt = judge.score_positions(ids, mask, alt)
    ref_actual, ref_alt = reference_scores(references["value_head"], ids, mask, alt, mask.bool(), [])
    assert float((r_actual.double() - ref_actual).abs().max()) <= 1e-5
    assert float((r_alt.double() - ref_alt).abs().max()) <= 1e-5


#: bfloat16 keeps 8 bits of mantissa: through two layers the hidden states differ from float64 by ~1e-2
#: relative, and the scores (probabilities) by at most this much on these tiny models.
BF16_TOLERANCE = 3e-2


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_bfloat16_tree_scores_are_within_the_stated_tolerance(checkpoints, references, attn: str):
    judge = load_judge(
        "prm_classifier", checkpoints["classifier-single"], dtype=torch.bfloat16, attn_implementation=attn
    )
    assert next(judge.body.parameters()).dtype == torch.bfloat16
    ids, mask, alt, score = judge_batch("left")
    suffix_ids = judge.tokenizer.encode(EXTRA, add_special_tokens=False)
    r_actual, r_alt = judge.score_positions(ids, mask, alt, score)
    ref_actual, ref_alt = reference_scores(references["classifier"], ids, mask, alt, score, suffix_ids)
    assert float((r_actual.double() - ref_actual).abs().max()) <= BF16_TOLERANCE
    assert float((r_alt.double() - ref_alt).abs().max()) <= BF16_TOLERANCE


# ----- score(request): prompt rendering, position mapping, roles -----------------------------------------------


def policy_request(stream: Stream) -> tuple[JudgeRequest, list[str], list[list[int]]]:
    """Two rollouts, prompts left-padded and responses right-padded: [pad.. prompt | response ..pad]."""
    tok = policy_tokenizer()
    prompts = ["2*3+4=", "9-1="]
    responses = ["6+4=10", "8"]
    pad = tok.pad_token_id
    p_ids = [tok.encode(p, add_special_tokens=False) for p in prompts]
    r_ids = [tok.encode(r, add_special_tokens=False) for r in responses]
    p_width, r_width = max(map(len, p_ids)), max(map(len, r_ids))
    ids, mask, decision = [], [], []
    for p, r in zip(p_ids, r_ids, strict=True):
        ids.append([pad] * (p_width - len(p)) + p + r + [pad] * (r_width - len(r)))
        mask.append([0] * (p_width - len(p)) + [1] * (len(p) + len(r)) + [0] * (r_width - len(r)))
        decision.append([0] * p_width + [1] * len(r) + [0] * (r_width - len(r)))
    ids_t = torch.tensor(ids)
    proposals = torch.roll(ids_t, 1, dims=1)  # some other policy tokens at every position
    proposals[0, p_width + 1] = ids_t[0, p_width + 1]  # one proposal equal to the rollout token
    request = JudgeRequest(
        stream=stream,
        input_ids=ids_t,
        attention_mask=torch.tensor(mask),
        points=DecisionPoints.from_mask(torch.tensor(decision, dtype=torch.bool)),
        proposals=proposals,
        prompt_lengths=torch.tensor([len(p) for p in p_ids]),
    )
    return request, prompts, r_ids


@pytest.mark.parametrize("stream", [Stream.TEACHER_PREFIX, Stream.STUDENT_PREFIX])
def test_score_renders_the_skywork_prompt_and_maps_scores_to_policy_positions(checkpoints, references, stream):
    judge = load_judge("prm_value_head", checkpoints["value_head-single"], branch_suffix="\n")
    request, prompts, r_ids = policy_request(stream)
    scores = checked_scores(judge, request)
    jt = judge.tokenizer
    newline = jt.encode("\n", add_special_tokens=False)
    bos = [jt.bos_token_id]
    ref = references["value_head"]
    decision = request.points.mask
    for b, (prompt, response) in enumerate(zip(prompts, r_ids, strict=True)):
        judge_prompt = bos + jt.encode(prompt + "\n", add_special_tokens=False)  # Skywork: bos + problem + "\n"
        cols = decision[b].nonzero().squeeze(-1).tolist()
        assert len(cols) == len(response)
        for k, col in enumerate(cols):
            actual = ref([*judge_prompt, *response[: k + 1], *newline])
            other = ref([*judge_prompt, *response[:k], int(request.proposals[b, col]), *newline])
            r_s, r_t = (other, actual) if stream is Stream.TEACHER_PREFIX else (actual, other)
            assert abs(float(scores.r_s[b, col]) - r_s) <= 1e-5
            assert abs(float(scores.r_t[b, col]) - r_t) <= 1e-5
    assert bool((scores.r_s[~decision] == 0).all()) and bool((scores.r_t[~decision] == 0).all())
    # a proposal equal to the rollout token gets the same score from both branches
    col = int(decision[0].nonzero()[1])
    assert abs(float(scores.r_s[0, col] - scores.r_t[0, col])) <= 1e-6


QWEN_STYLE_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_classifier_prompt_uses_the_judge_chat_template_when_present(tmp_path: Path):
    path = write_checkpoint(tmp_path / "tpl", "classifier", chat_template="[{{ messages[1]['content'] }}]{{ 'A' }}")
    judge = load_judge("prm_classifier", path)
    assert judge.render_prompt("1+1=") == "[1+1=]A"


def test_classifier_prompt_falls_back_to_plain_chatml_with_the_qwen_math_system_prompt(checkpoints, tmp_path: Path):
    judge = load_judge("prm_classifier", checkpoints["classifier-single"])
    expected = (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
        "<|im_start|>user\n1+1=<|im_end|>\n<|im_start|>assistant\n"
    )
    assert judge.render_prompt("1+1=") == expected
    templated = load_judge(
        "prm_classifier", write_checkpoint(tmp_path / "q", "classifier", chat_template=QWEN_STYLE_TEMPLATE)
    )
    assert templated.render_prompt("1+1=") == expected  # a Qwen-style template renders the same text


def test_classifier_score_reads_after_extra_0_by_default(checkpoints, references):
    judge = load_judge("prm_classifier", checkpoints["classifier-sharded"])
    request, prompts, r_ids = policy_request(Stream.STUDENT_PREFIX)
    scores = checked_scores(judge, request)
    jt = judge.tokenizer
    judge_prompt = jt.encode(judge.render_prompt(prompts[1]), add_special_tokens=False)
    extra = jt.convert_tokens_to_ids(EXTRA)
    col = int(request.points.mask[1].nonzero()[0])
    expected = references["classifier"]([*judge_prompt, r_ids[1][0], extra])
    assert abs(float(scores.r_s[1, col]) - expected) <= 1e-5


# ----- refusals ------------------------------------------------------------------------------------------------


def test_creating_from_config_never_touches_the_path_and_load_refuses_a_missing_directory(tmp_path: Path):
    missing = tmp_path / "no-such-prm"
    judge = vcrd_core.create("judges", "prm_value_head", {"path": str(missing)})
    assert judge.body is None
    with pytest.raises(VcrdError, match=r"checkpoint directory .*no-such-prm does not exist") as err:
        judge.load(JudgeContext(tokenizer=policy_tokenizer()))
    assert "\n" not in str(err.value)


def test_a_checkpoint_without_the_value_head_is_refused(tmp_path: Path):
    path = write_checkpoint(tmp_path / "nohead", "value_head", head=False)
    judge = vcrd_core.create("judges", "prm_value_head", {"path": str(path)})
    with pytest.raises(VcrdError, match=r"has no v_head\.summary\.weight; is it a value-head PRM\?"):
        judge.load(JudgeContext(tokenizer=policy_tokenizer()))


def test_a_value_head_checkpoint_is_refused_by_the_classifier(checkpoints):
    judge = vcrd_core.create("judges", "prm_classifier", {"path": str(checkpoints["value_head-sharded"])})
    with pytest.raises(VcrdError, match=r"has no score\.0\.weight; is it a two-class"):
        judge.load(JudgeContext(tokenizer=policy_tokenizer()))


def test_a_policy_vocabulary_that_is_not_a_subset_is_refused_naming_a_token(checkpoints):
    swapped = [*SPECIALS, *CHARS]
    i, j = swapped.index("a"), swapped.index("b")
    swapped[i], swapped[j] = swapped[j], swapped[i]
    judge = vcrd_core.create("judges", "prm_value_head", {"path": str(checkpoints["value_head-single"])})
    with pytest.raises(VcrdError, match=r"policy token 'b' \(id \d+\) has id \d+ in the judge tokenizer .*subset"):
        judge.load(JudgeContext(tokenizer=make_tokenizer(swapped)))
    extra = make_tokenizer([*SPECIALS, *CHARS, "<extra_0>", "<think>"])
    with pytest.raises(VcrdError, match=r"policy token '<think>' \(id \d+\) is missing from the judge tokenizer"):
        judge.load(JudgeContext(tokenizer=extra))


def test_an_input_longer_than_the_judge_context_is_refused(tmp_path: Path):
    path = write_checkpoint(tmp_path / "short", "value_head", max_positions=12)
    judge = load_judge("prm_value_head", path, branch_suffix="\n")
    ids, mask, alt, score = judge_batch("right")  # the longest row has 12 tokens: positions 0..11
    score = score.clone()
    score[0, 11] = True
    with pytest.raises(
        VcrdError, match=r"position ids up to 12 .* context is 12 positions \(max_position_embeddings\)"
    ):
        judge.score_positions(ids, mask, alt, score)
    score[0, 11] = False  # without the last position, the suffix reaches position 11 at most: accepted
    judge.score_positions(ids, mask, alt, score)


def test_nan_scores_from_the_model_are_refused_before_they_become_weights(tmp_path: Path):
    path = write_checkpoint(tmp_path / "nan", "classifier", nan=True)
    judge = load_judge("prm_classifier", path)
    request, _, _ = policy_request(Stream.TEACHER_PREFIX)
    assert bool(torch.isnan(judge.score(request).r_s[request.points.mask]).all())
    with pytest.raises(VcrdError, match=r"returned NaN r_s scores .* refusing to turn them into weights"):
        checked_scores(judge, request)


def test_a_branch_suffix_the_judge_tokenizer_cannot_encode_is_refused(checkpoints):
    judge = vcrd_core.create(
        "judges", "prm_value_head", {"path": str(checkpoints["value_head-single"]), "branch_suffix": "\t"}
    )
    with pytest.raises(VcrdError, match=r"branch_suffix '\\t' encodes to no token"):
        judge.load(JudgeContext(tokenizer=policy_tokenizer()))


def test_scoring_before_load_is_refused(checkpoints):
    judge = vcrd_core.create("judges", "prm_value_head", {"path": str(checkpoints["value_head-single"])})
    request, _, _ = policy_request(Stream.TEACHER_PREFIX)
    with pytest.raises(VcrdError, match=r"call load\(context\) before scoring"):
        judge.score(request)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"prompt_template": "{question}\n"}, r"unknown placeholder \{question\}; valid: \{bos\}, \{problem\}"),
        ({"prompt_template": "{bos}\n"}, r"must contain \{problem\}"),
        ({"branch_suffix": ""}, "use null for no suffix"),
        ({"attn_implementation": "flash"}, "attn_implementation"),
        ({"temperature": 1.0}, "temperature"),
    ],
)
def test_bad_params_are_config_errors_at_creation(params: dict, message: str):
    with pytest.raises(ConfigError, match=message):
        vcrd_core.create("judges", "prm_value_head", {"path": "/nowhere", **params})


def test_decision_points_on_prompt_tokens_are_refused(checkpoints):
    judge = load_judge("prm_value_head", checkpoints["value_head-single"])
    request, _, _ = policy_request(Stream.TEACHER_PREFIX)
    mask = request.points.mask.clone()
    mask[0, 1] = True  # a prompt token of row 0
    request.points = DecisionPoints.from_mask(mask)
    with pytest.raises(VcrdError, match="decision point at prompt position 1 of row 0"):
        judge.score(request)


def test_both_judges_are_registered_with_a_docstring_summary():
    assert {"prm_value_head", "prm_classifier"} <= set(vcrd_core.available("judges"))
    from vcrd_core.plugins.registry import entries

    found = entries("judges")
    assert found["prm_value_head"].summary.startswith("Value-head PRM judge")
    assert found["prm_classifier"].summary.startswith("Two-class PRM judge")


# ----- scripts/verify_real_prm.py on tiny checkpoints (the real weights are never downloaded here) -------------


def load_verify_script():
    import importlib.util

    path = Path(__file__).resolve().parents[3] / "scripts" / "verify_real_prm.py"
    spec = importlib.util.spec_from_file_location("verify_real_prm", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_verify_script_skywork_check_agrees_with_a_plain_full_pass_on_a_tiny_value_head(checkpoints, capsys):
    script = load_verify_script()
    args = ["--skywork", str(checkpoints["value_head-sharded"]), "--device", "cpu", "--dtype", "float32"]
    assert script.main([*args, "--tolerance", "1e-5"]) == 0
    out = capsys.readouterr().out
    assert out.count("-> OK") == 2


def test_verify_script_qwen_check_scores_the_four_card_steps_and_reports_a_mismatch_on_random_weights(tmp_path):
    script = load_verify_script()
    path = write_checkpoint(tmp_path / "q", "classifier", chat_template=QWEN_STYLE_TEMPLATE)
    # random weights cannot reproduce the card's numbers: the check must say so (exit 1), not pass vacuously
    assert script.main(["--qwen", str(path), "--device", "cpu", "--dtype", "float32"]) == 1
    assert script.main(["--qwen", str(tmp_path / "missing")]) == 2


def test_a_proposal_id_outside_the_judge_embeddings_is_refused(checkpoints):
    judge = load_judge("prm_value_head", checkpoints["value_head-single"])
    ids, mask, alt, score = judge_batch("right")
    alt = alt.clone()
    alt[score] = 10_000
    with pytest.raises(VcrdError, match="alt_ids holds token id 10000, outside the judge's 100 embeddings"):
        judge.score_positions(ids, mask, alt, score)
