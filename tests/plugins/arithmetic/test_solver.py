"""The ``arithmetic_solver`` generator on the real char tokenizer, checked against the grammar: from the start,
from valid partial prefixes, after a complete or an invalid response, with noise, batch-invariance, ``n``,
truncation and configuration errors."""

from __future__ import annotations

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from vcrd_arithmetic import grammar as A
from vcrd_arithmetic.char_tokenizer import build_char_tokenizer

import vcrd_core
from vcrd_core import ConfigError, VcrdError
from vcrd_core.rollouts.generator import Generator, GeneratorContext, Sample, Sampling

TOK = build_char_tokenizer()
EOS = TOK.eos_token_id
LONG = "2*3+4*5-6*7+8*9-1*2+3*4="  # 12 operands: 11 steps, a long planned response


def make_solver(params: dict | None = None, tokenizer: object = TOK) -> Generator:
    solver = vcrd_core.create("generators", "arithmetic_solver", params or {})
    solver.load(GeneratorContext(model_path="", tokenizer=tokenizer, tokenizer_path="char", vocab_size=len(TOK)))
    return solver


def ids(text: str) -> list[int]:
    return TOK.encode(text, add_special_tokens=False)


def one(solver: Generator, text: str, **sampling: object) -> Sample:
    (samples,) = solver.generate([ids(text)], Sampling(max_new_tokens=sampling.pop("max_new_tokens", 200), **sampling))
    (sample,) = samples
    return sample


def test_solver_is_registered_through_the_entry_point() -> None:
    assert "arithmetic_solver" in vcrd_core.available("generators")
    solver = vcrd_core.create("generators", "arithmetic_solver", {"error_rate": 0.25})
    assert isinstance(solver, Generator)
    assert solver.params.error_rate == 0.25


@pytest.mark.parametrize("problem", ["2+3=", "2*3+4*5=", "1-2+3=", "9*9*9*9=", "0*5-7*2+1=", LONG])
def test_at_the_start_it_writes_the_whole_canonical_derivation_then_eos(problem: str) -> None:
    sample = one(make_solver(), "<bos>" + problem)  # special tokens of the prompt are skipped
    assert A.is_complete(problem, sample.text)
    assert sample.text == A.canonical_derivation(problem)
    assert sample.token_ids == [*ids(sample.text), EOS]
    assert sample.finish_reason == "stop"


@pytest.mark.parametrize(
    ("problem", "prefix"),
    [
        ("2*3+4*5=", "6+4*5=6+2"),  # mid-number
        ("2*3+4*5=", "6+4*5="),  # right after '='
        ("2*3+4*5=", "2*3+"),  # mid-step, the non-leftmost step
        ("2*3+4*5=", "2*3+20=6+20="),  # after '=', before the value
        ("2*3+4*5=", "2*3+20=6+20=2"),  # mid-value
        ("1-2+3=", "-"),  # the sign of a negative intermediate
        (LONG, "6+4*5-6*7+8*9-1*2+3*4=6+4*5-6*7+8*9-1*2+1"),  # mid-number, far in
    ],
)
def test_from_a_valid_partial_prefix_it_completes_a_correct_derivation(problem: str, prefix: str) -> None:
    assert A.is_valid_prefix(problem, prefix) and not A.is_complete(problem, prefix)
    sample = one(make_solver(), problem + prefix)
    assert A.is_complete(problem, prefix + sample.text)
    assert sample.text != ""
    assert sample.token_ids[-1] == EOS


def test_the_continuation_follows_the_leftmost_step_then_the_canonical_derivation() -> None:
    solver = make_solver()
    assert one(solver, "2*3+4*5=").text == "6+4*5=6+20=26"
    assert one(solver, "2*3+4*5=2").text == "*3+20=6+20=26"  # '2*3+20' is the only step starting with '2'
    assert one(solver, "2*3+4*5=6+4*5=6+2").text == "0=26"
    assert one(solver, "2*3+4*5=6+4*5=6+20=").text == "26"
    assert one(solver, "2*3+4*5=6+4*5=6+20=2").text == "6"


@pytest.mark.parametrize("text", ["2*3+4*5=6+4*5=6+20=26", "2+3=5", "1-2+3=-1+3=2"])
def test_after_a_complete_derivation_it_writes_only_eos(text: str) -> None:
    sample = one(make_solver(), text)
    assert (sample.token_ids, sample.text, sample.finish_reason) == ([EOS], "", "stop")


@pytest.mark.parametrize("text", ["2*3+4*5=7", "2*3+4*5=6+20=", "2+3=5=", "2+3=5+0", "2*3+4*5==", "2+3=05"])
def test_after_an_invalid_prefix_it_writes_only_eos(text: str) -> None:
    sample = one(make_solver({"error_rate": 0.9}), text)  # noise has no character to corrupt
    assert (sample.token_ids, sample.text, sample.finish_reason) == ([EOS], "", "stop")


def test_error_rate_one_makes_every_written_character_random() -> None:
    clean = A.canonical_derivation(LONG)
    solver = make_solver({"error_rate": 1.0})
    (samples,) = solver.generate([ids(LONG)], Sampling(max_new_tokens=200, n=4, seed=3))
    for sample in samples:
        assert len(sample.text) == len(clean)  # no re-planning: the planned length
        assert set(sample.text) <= set(A.ALPHABET)
        assert sample.text != clean
        assert sample.token_ids == [*ids(sample.text), EOS]
        assert sample.finish_reason == "stop"
    # uniform over the alphabet: across the samples most of its characters appear
    assert len(set("".join(s.text for s in samples))) >= 10
    assert len({s.text for s in samples}) == 4


def test_error_rate_zero_ignores_seed_and_sampling_parameters() -> None:
    solver = make_solver()
    texts = {
        one(solver, LONG, seed=seed, temperature=temperature, top_p=0.5, top_k=3).text
        for seed in (0, 1, 2)
        for temperature in (0.0, 1.0, 2.0)
    }
    assert texts == {A.canonical_derivation(LONG)}


def test_samples_are_batch_invariant_and_depend_on_the_seed() -> None:
    solver = make_solver({"error_rate": 0.5})
    prompts = [ids(LONG), ids("2*3+4*5="), ids("<bos>9-8*7="), ids(LONG[:-1] + "*3=")]
    sampling = Sampling(max_new_tokens=200, n=3, seed=11)
    batched = solver.generate(prompts, sampling)
    assert len(batched) == len(prompts) and all(len(s) == 3 for s in batched)
    for prompt, samples in zip(prompts, batched, strict=True):
        assert solver.generate([prompt], sampling) == [samples]  # alone == in the batch
    assert solver.generate(prompts[::-1], sampling) == batched[::-1]
    assert solver.generate(prompts, sampling) == batched  # the same seed, the same samples
    other = solver.generate([prompts[0]], Sampling(max_new_tokens=200, n=3, seed=12))[0]
    assert [s.text for s in other] != [s.text for s in batched[0]]
    assert len({s.text for s in batched[0]}) == 3  # the n samples of one prompt differ


def test_n_samples_per_prompt() -> None:
    solver = make_solver()
    out = solver.generate([ids("2+3="), ids("2*3+4*5=6+4*5=")], Sampling(max_new_tokens=50, n=5))
    assert [len(samples) for samples in out] == [5, 5]
    assert all(s.text == "5" for s in out[0])
    assert all(s.text == "6+20=26" for s in out[1])


def test_max_new_tokens_truncates_with_finish_reason_length() -> None:
    solver = make_solver()
    clean = A.canonical_derivation(LONG)
    sample = one(solver, LONG, max_new_tokens=7)
    assert (sample.token_ids, sample.text, sample.finish_reason) == (ids(clean[:7]), clean[:7], "length")
    exact = one(solver, LONG, max_new_tokens=len(clean) + 1)  # room for the answer and EOS
    assert (exact.text, exact.token_ids[-1], exact.finish_reason) == (clean, EOS, "stop")
    cut = one(solver, LONG, max_new_tokens=len(clean))  # room for the answer, not for EOS
    assert (cut.text, cut.token_ids[-1], cut.finish_reason) == (clean, ids(clean[-1])[0], "length")


def test_stop_strings_end_the_response() -> None:
    sample = one(make_solver(), "2*3+4*5=", stop=("=",))
    assert (sample.text, sample.finish_reason) == ("6+4*5=", "stop")


def test_a_tokenizer_without_eos_is_refused_in_one_line() -> None:
    core = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(["<pad>", *A.ALPHABET])}, unk_token=None))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    no_eos = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>")
    assert no_eos.eos_token_id is None
    with pytest.raises(VcrdError, match="needs a tokenizer with an eos_token_id") as info:
        make_solver(tokenizer=no_eos)
    assert "\n" not in str(info.value)


def test_generate_before_load_and_a_prompt_without_a_problem_are_refused() -> None:
    solver = vcrd_core.create("generators", "arithmetic_solver", {})
    with pytest.raises(VcrdError, match="call load"):
        solver.generate([ids("2+3=")], Sampling(max_new_tokens=5))
    with pytest.raises(VcrdError, match="prompt 1: no '='"):
        make_solver().generate([ids("2+3="), ids("2+3")], Sampling(max_new_tokens=5))


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"error_rate": 1.5}, "less than or equal to 1"),
        ({"error_rate": -0.1}, "greater than or equal to 0"),
        ({"eror_rate": 0.1}, "Did you mean 'error_rate'?"),
    ],
)
def test_bad_params_are_a_config_error(params: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        vcrd_core.create("generators", "arithmetic_solver", params, path="generator")
    message = str(info.value)
    assert message.startswith("generator.params.")
    assert fragment in message
    assert "\n" not in message
