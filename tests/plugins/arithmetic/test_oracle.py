"""The ``oracle`` judge on real batches from the char tokenizer, against a brute-force reference.

The reference enumerates every derivation of the prompt and calls a token valid when the response
with it is still a prefix of one of them (EOS: when the response *is* one); the judge never
enumerates, so the two are independent.
"""

from __future__ import annotations

import random

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from vcrd_arithmetic import grammar as A
from vcrd_arithmetic.char_tokenizer import build_char_tokenizer

import vcrd_core
from vcrd_core import ConfigError, DecisionPoints, JudgeContext, JudgeRequest, Stream, VcrdError
from vcrd_core.judging.judge import checked_scores

VALID, INVALID = 0.9, 0.1
TOK = build_char_tokenizer()
PAD, BOS, EOS = TOK.pad_token_id, TOK.bos_token_id, TOK.eos_token_id


def make_oracle(params: dict | None = None, tokenizer: object = TOK) -> vcrd_core.TokenJudge:
    judge = vcrd_core.create("judges", "oracle", params or {})
    judge.load(JudgeContext(tokenizer=tokenizer))
    return judge


def reference(prompt: str, tokens: list[int], alts: list[int], derivs: list[str]) -> tuple[list, list]:
    """Scores of the response tokens (after the prompt) and of their alternatives, the plain way."""
    actual, alt = [], []
    prefix, ended = "", False

    def valid(token: int) -> bool:
        if ended or not any(d.startswith(prefix) for d in derivs):
            return False
        if token == EOS:
            return prefix in derivs
        if token in (PAD, BOS):
            return False
        return any(d.startswith(prefix + TOK.convert_ids_to_tokens(token)) for d in derivs)

    for token, other in zip(tokens, alts, strict=True):
        actual.append(VALID if valid(token) else INVALID)
        alt.append(VALID if valid(other) else INVALID)
        if token == EOS:
            ended = True
        elif token in (PAD, BOS):
            prefix += "#"  # never a prefix of a derivation again
        else:
            prefix += TOK.convert_ids_to_tokens(token)
    return actual, alt


def batch(texts: list[str], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    enc = TOK(texts, padding=True, padding_side=side, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def positions_of(mask_row: torch.Tensor) -> list[int]:
    return [t for t, m in enumerate(mask_row.tolist()) if m]


# --- construction ----------------------------------------------------------------------------------


def test_oracle_is_registered_through_the_entry_point() -> None:
    assert "oracle" in vcrd_core.available("judges")
    judge = vcrd_core.create("judges", "oracle", {"valid": 0.8, "invalid": 0.3})
    assert isinstance(judge, vcrd_core.TokenJudge)
    assert (judge.params.valid, judge.params.invalid) == (0.8, 0.3)


@pytest.mark.parametrize(
    ("params", "field", "fragment"),
    [
        ({"valid": 0.1, "invalid": 0.1}, "valid", "must be greater than invalid"),
        ({"valid": 0.2, "invalid": 0.5}, "valid", "must be greater than invalid"),
        ({"valid": 1.5}, "valid", "less than or equal to 1"),
        ({"invalid": -0.1}, "invalid", "greater than or equal to 0"),
        ({"valdi": 0.9}, "valdi", "Did you mean 'valid'?"),
    ],
)
def test_bad_params_are_refused_with_their_yaml_path(params: dict, field: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        vcrd_core.create("judges", "oracle", params, path="judge")
    message = str(info.value)
    assert message.startswith(f"judge.params.{field}: ")
    assert fragment in message
    assert "\n" not in message


def test_load_refuses_a_missing_tokenizer() -> None:
    judge = vcrd_core.create("judges", "oracle", {})
    with pytest.raises(VcrdError, match="needs the policy tokenizer"):
        judge.load(JudgeContext(tokenizer=None))


def test_scoring_before_load_is_refused() -> None:
    judge = vcrd_core.create("judges", "oracle", {})
    ids, mask = batch(["<bos>2+3=5<eos>"], "right")
    with pytest.raises(VcrdError, match="call load"):
        judge.score_positions(ids, mask, ids)


def test_a_sequence_without_a_prompt_is_refused() -> None:
    ids, mask = batch(["<bos>2+3"], "right")
    with pytest.raises(VcrdError, match="sequence 0: no '=' found"):
        make_oracle().score_positions(ids, mask, ids)


# --- scores ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["left", "right"])
def test_every_derivation_is_valid_at_every_token_including_eos(side: str) -> None:
    prompt = "2*3+4*5="
    derivs = A.derivations(prompt)
    ids, mask = batch([f"<bos>{prompt}{d}<eos>" for d in derivs], side)
    r_actual, r_alt = make_oracle().score_positions(ids, mask, ids)
    assert r_actual.dtype == torch.float32 and r_actual.shape == ids.shape
    for b, d in enumerate(derivs):
        present = positions_of(mask[b])
        response = present[1 + len(prompt) :]
        assert len(response) == len(d) + 1
        assert r_actual[b, response].tolist() == pytest.approx([VALID] * len(response))
        outside = [t for t in range(ids.shape[1]) if t not in response]
        assert r_actual[b, outside].tolist() == [0.0] * len(outside)  # prompt and padding
        assert r_alt[b, outside].tolist() == [0.0] * len(outside)


def test_both_steps_at_a_branching_prefix_are_valid() -> None:
    # After `2*3+4*5=` both `6` (for 6+4*5) and `2` (for 2*3+20) are valid; `4` is not.
    ids, mask = batch(["<bos>2*3+4*5=6+4*5=6+20=26<eos>"], "right")
    first = 1 + len("2*3+4*5=")
    for alt_char, expected in (("2", VALID), ("6", VALID), ("4", INVALID), ("=", INVALID), ("-", INVALID)):
        alts = ids.clone()
        alts[0, first] = TOK.convert_tokens_to_ids(alt_char)
        _, r_alt = make_oracle().score_positions(ids, mask, alts)
        assert r_alt[0, first].item() == pytest.approx(expected), alt_char


def test_a_wrong_step_is_rejected_at_its_first_wrong_character_and_after() -> None:
    prompt, response = "2*3+4*5=", "6+4*5=6+21=27"
    ids, mask = batch([f"<bos>{prompt}{response}<eos>"], "right")
    r_actual, _ = make_oracle().score_positions(ids, mask, ids)
    scores = r_actual[0, 1 + len(prompt) :].tolist()
    wrong = A.first_invalid_index(prompt, response)
    assert wrong == response.index("1")
    assert scores[:wrong] == pytest.approx([VALID] * wrong)
    assert scores[wrong:] == pytest.approx([INVALID] * (len(response) + 1 - wrong))  # EOS included


def test_alternatives_after_a_mistake_are_invalid_even_if_they_would_have_fixed_it() -> None:
    ids, mask = batch(["<bos>2+3=6<eos>"], "right")
    alts = torch.full_like(ids, TOK.convert_tokens_to_ids("5"))
    alts[0, 6] = EOS  # EOS after the wrong `6`
    _, r_alt = make_oracle().score_positions(ids, mask, alts)
    assert r_alt[0, 5].item() == pytest.approx(VALID)  # `5` in place of `6`
    assert r_alt[0, 6].item() == pytest.approx(INVALID)


def test_eos_is_valid_only_after_the_complete_answer() -> None:
    prompt = "1-2+3="
    ids, mask = batch([f"<bos>{prompt}-1+3=2<eos>", f"<bos>{prompt}-1+3<eos><pad>"], "right")
    alts = torch.full_like(ids, EOS)
    r_actual, r_alt = make_oracle().score_positions(ids, mask, alts)
    start = 1 + len(prompt)
    # complete: EOS is valid only at the last position, and the rollout's own EOS there too
    assert r_alt[0, start:].tolist() == pytest.approx([INVALID] * 6 + [VALID])
    assert r_actual[0, -1].item() == pytest.approx(VALID)
    # `-1+3` is a step, not the value: EOS after it is invalid
    assert r_actual[1, start + 4].item() == pytest.approx(INVALID)
    assert r_actual[1, start : start + 4].tolist() == pytest.approx([VALID] * 4)


def test_nothing_but_eos_follows_the_answer() -> None:
    prompt = "2+3="
    ids, mask = batch([f"<bos>{prompt}5<eos>"], "right")
    last = ids.shape[1] - 1
    for alt_token, expected in (("=", INVALID), ("0", INVALID), ("<eos>", VALID), ("<pad>", INVALID)):
        alts = ids.clone()
        alts[0, last] = TOK.convert_tokens_to_ids(alt_token)
        _, r_alt = make_oracle().score_positions(ids, mask, alts)
        assert r_alt[0, last].item() == pytest.approx(expected), alt_token


def test_pad_and_bos_are_never_valid() -> None:
    ids, mask = batch(["<bos>2*3=6<eos>"], "right")
    for special in (PAD, BOS):
        _, r_alt = make_oracle().score_positions(ids, mask, torch.full_like(ids, special))
        assert r_alt[0, 5:].tolist() == pytest.approx([INVALID, INVALID])


def test_negative_first_numbers_are_scored_valid() -> None:
    prompt, response = "1-5*2=", "1-10=-9"
    ids, mask = batch([f"<bos>{prompt}{response}<eos>"], "left")
    r_actual, _ = make_oracle().score_positions(ids, mask, ids)
    assert r_actual[0, -(len(response) + 1) :].tolist() == pytest.approx([VALID] * (len(response) + 1))


def test_custom_scores_are_used() -> None:
    ids, mask = batch(["<bos>2+3=6<eos>"], "right")
    r_actual, _ = make_oracle({"valid": 0.75, "invalid": 0.05}).score_positions(ids, mask, ids)
    assert r_actual[0].tolist() == pytest.approx([0, 0, 0, 0, 0, 0.05, 0.05])
    ids, mask = batch(["<bos>2+3=5<eos>"], "right")
    r_actual, _ = make_oracle({"valid": 0.75, "invalid": 0.05}).score_positions(ids, mask, ids)
    assert r_actual[0].tolist() == pytest.approx([0, 0, 0, 0, 0, 0.75, 0.75])


def test_score_mask_selects_positions_and_never_the_prompt() -> None:
    ids, mask = batch(["<bos>2*3+4=6+4=10<eos>"], "right")
    score_mask = torch.zeros_like(ids, dtype=torch.bool)
    score_mask[0, [2, 8, 9]] = True  # a prompt position and two response positions
    r_actual, r_alt = make_oracle().score_positions(ids, mask, ids, score_mask)
    expected = [0.0] * ids.shape[1]
    expected[8] = expected[9] = VALID
    assert r_actual[0].tolist() == pytest.approx(expected)
    assert r_alt[0].tolist() == pytest.approx(expected)


@pytest.mark.parametrize("side", ["left", "right"])
def test_random_rollouts_and_alternatives_match_the_brute_force_reference(side: str) -> None:
    rng = random.Random(0)
    texts, prompts, derivs = [], [], []
    for _ in range(24):
        prompt = A.random_problem(rng, rng.randint(2, 4))
        found = A.derivations(prompt)
        response = [*rng.choice(found), "<eos>"]
        if rng.random() < 0.7:  # corrupt one token, or cut the response short
            i = rng.randrange(len(response))
            response[i] = rng.choice([*A.ALPHABET, "<eos>", "<pad>", "<bos>"])
            if rng.random() < 0.3:
                response = response[: i + 1]
        texts.append("<bos>" + prompt + "".join(response))
        prompts.append(prompt)
        derivs.append(found)
    ids, mask = batch(texts, side)
    mask[ids == PAD] = 1  # a corrupted `<pad>` inside a rollout is a token, not padding
    enc = [TOK(t)["input_ids"] for t in texts]
    for b, row in enumerate(enc):  # restore the real padding
        padding = ids.shape[1] - len(row)
        pad_at = range(padding) if side == "left" else range(len(row), ids.shape[1])
        mask[b, list(pad_at)] = 0
    gen = torch.Generator().manual_seed(0)
    alts = torch.randint(0, len(TOK), ids.shape, generator=gen)
    r_actual, r_alt = make_oracle().score_positions(ids, mask, alts)
    for b, prompt in enumerate(prompts):
        present = positions_of(mask[b])
        response = present[1 + len(prompt) :]
        want_actual, want_alt = reference(prompt, ids[b, response].tolist(), alts[b, response].tolist(), derivs[b])
        assert r_actual[b, response].tolist() == pytest.approx(want_actual), texts[b]
        assert r_alt[b, response].tolist() == pytest.approx(want_alt), texts[b]
        prompt_part = present[: 1 + len(prompt)]
        assert r_actual[b, prompt_part].abs().sum().item() == 0.0


def test_score_maps_the_streams_to_student_and_teacher_roles() -> None:
    ids, mask = batch(["<bos>2*3+4=6+4=10<eos>"], "right")
    proposals = torch.full_like(ids, TOK.convert_tokens_to_ids("9"))  # invalid everywhere
    decision = mask.bool().clone()
    decision[0, :7] = False
    judge = make_oracle()
    teacher = checked_scores(
        judge, JudgeRequest(Stream.TEACHER_PREFIX, ids, mask, DecisionPoints.from_mask(decision), proposals=proposals)
    )
    student = checked_scores(
        judge, JudgeRequest(Stream.STUDENT_PREFIX, ids, mask, DecisionPoints.from_mask(decision), proposals=proposals)
    )
    # teacher prefix: the rollout is the teacher's (r_t), the proposal the student's (r_s)
    assert teacher.r_t[0, 7:].tolist() == pytest.approx([VALID] * 7)
    assert teacher.r_s[0, 7:].tolist() == pytest.approx([INVALID] * 7)
    assert torch.equal(student.r_s, teacher.r_t) and torch.equal(student.r_t, teacher.r_s)


def test_a_tokenizer_with_multi_character_tokens_is_read_as_text() -> None:
    chars = {t: i for i, t in enumerate(["<pad>", "<bos>", "<eos>", *A.ALPHABET, "=6", "20"])}
    core = Tokenizer(models.WordLevel(vocab=chars, unk_token=None))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("=6|20|."), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens(["<pad>", "<bos>", "<eos>"])
    multi = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")
    text = "<bos>2*3+4*5=6+4*5=6+20=26<eos>"
    ids = multi(text, return_tensors="pt")["input_ids"]
    tokens = multi.convert_ids_to_tokens(ids[0].tolist())
    assert tokens[:8] == ["<bos>", "2", "*", "3", "+", "4", "*", "5"] and tokens[8] == "=6"
    judge = make_oracle(tokenizer=multi)
    alts = torch.full_like(ids, chars["20"])
    r_actual, r_alt = judge.score_positions(ids, torch.ones_like(ids), alts)
    assert r_actual[0, :9].tolist() == [0.0] * 9  # `=6` ends the prompt and starts the response
    assert r_actual[0, 9:].tolist() == pytest.approx([VALID] * (len(tokens) - 9))
    # `20` as an alternative is valid only where the rollout itself wrote it, after `6+4*5=6+`
    assert tokens[9:] == ["+", "4", "*", "5", "=6", "+", "20", "=", "2", "6", "<eos>"]
    expected_alt = [INVALID] * len(tokens)
    expected_alt[tokens.index("20")] = VALID
    assert r_alt[0, 9:].tolist() == pytest.approx(expected_alt[9:])
