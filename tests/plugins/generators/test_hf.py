"""The ``hf`` generator on a tiny local Qwen2: batched left padding, seeds, n, stop strings, finish reasons."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.rollout_helpers import save_tiny_model
from vcrd_core.plugins.registry import create
from vcrd_core.rollouts.generator import Generator, GeneratorContext, Sampling
from vcrd_core.runs.preflight import load_tokenizer

PROMPTS = ["1+2*3=", "4*5-6=", "7=", "8+9+1-2*3="]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("hf") / "model", seed=0, hidden_size=64)


@pytest.fixture(scope="module")
def loaded(model_dir: Path):
    tok = load_tokenizer(str(model_dir), "x")
    gen = create("generators", "hf", {"batch_size": 3, "device": "cpu"})
    assert isinstance(gen, Generator)
    gen.load(GeneratorContext(str(model_dir), tok, str(model_dir), len(tok), "float32"))
    return gen, tok, [tok(p)["input_ids"] for p in PROMPTS]


def reference_greedy(model_dir: Path, ids: list[int], steps: int) -> list[int]:
    """Greedy decoding one prompt at a time, no padding, with a plain forward loop."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    seq = list(ids)
    out: list[int] = []
    for _ in range(steps):
        with torch.no_grad():
            nxt = int(model(torch.tensor([seq])).logits[0, -1].argmax())
        out.append(nxt)
        seq.append(nxt)
        if nxt == 2:
            break
    return out


def test_greedy_matches_unbatched_reference(loaded, model_dir: Path) -> None:
    gen, tok, ids = loaded
    out = gen.generate(ids, Sampling(max_new_tokens=12, temperature=0))
    assert [len(o) for o in out] == [1, 1, 1, 1]
    for prompt_ids, (sample,) in zip(ids, out, strict=True):
        assert sample.token_ids == reference_greedy(model_dir, prompt_ids, 12)
        assert sample.text == tok.decode(sample.token_ids, skip_special_tokens=True)
        ended = sample.token_ids[-1] == tok.eos_token_id
        assert sample.finish_reason == ("stop" if ended else "length")
        assert ended or len(sample.token_ids) == 12


def test_sampling_is_seeded_and_gives_n(loaded) -> None:
    gen, _, ids = loaded
    a = gen.generate(ids, Sampling(max_new_tokens=10, n=3, seed=7, top_k=20, top_p=0.9))
    b = gen.generate(ids, Sampling(max_new_tokens=10, n=3, seed=7, top_k=20, top_p=0.9))
    c = gen.generate(ids, Sampling(max_new_tokens=10, n=3, seed=8, top_k=20, top_p=0.9))
    assert [len(o) for o in a] == [3] * 4
    assert [[s.token_ids for s in o] for o in a] == [[s.token_ids for s in o] for o in b]
    assert [[s.token_ids for s in o] for o in a] != [[s.token_ids for s in o] for o in c]
    for o in a:
        for s in o:
            assert 1 <= len(s.token_ids) <= 10 and s.finish_reason in ("stop", "length")


def test_generating_leaves_the_callers_random_state_as_it_was(loaded) -> None:
    """A judge or on-policy rollout generating inside a training step must not reset the run's RNG (dropout,
    shuffling, online proposals would replay the same stream every step)."""
    gen, _, ids = loaded
    torch.manual_seed(1234)
    torch.rand(3)
    state = torch.random.get_rng_state()
    expected = torch.rand(5)
    torch.random.set_rng_state(state)
    gen.generate(ids, Sampling(max_new_tokens=6, n=2, seed=7))
    assert torch.equal(torch.rand(5), expected)


def test_stop_strings(loaded) -> None:
    gen, tok, ids = loaded
    free = gen.generate(ids, Sampling(max_new_tokens=20, n=4, seed=3))
    # stop at the second character each sample produced freely: it is then cut right after it
    texts = [s.text for o in free for s in o if len(s.text) >= 3]
    stop = texts[0][1]
    out = gen.generate(ids, Sampling(max_new_tokens=20, n=4, seed=3, stop=(stop,)))
    for o in out:
        for s in o:
            if s.finish_reason == "stop" and s.token_ids[-1] != tok.eos_token_id:
                assert s.text.endswith(stop) and stop not in s.text[:-1]
            else:
                assert stop not in s.text
    assert any(s.finish_reason == "stop" and s.text.endswith(stop) for o in out for s in o)


def test_padded_lm_head_ids_never_sampled(tmp_path: Path) -> None:
    # an lm_head 40 rows larger than the tokenizer (as Qwen2.5's padded vocabularies)
    model_dir = save_tiny_model(tmp_path / "m", seed=1, hidden_size=64, vocab_size=99 + 40)
    tok = load_tokenizer(str(model_dir), "x")
    ids = tok("1+2=")["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():  # make a padded row the unrestricted greedy choice
        top = int(model(torch.tensor([ids])).logits[0, -1, :99].argmax())
        model.lm_head.weight[99:] = 3 * model.lm_head.weight[top]
        assert int(model(torch.tensor([ids])).logits[0, -1].argmax()) >= 99
    model.save_pretrained(model_dir)
    gen = create("generators", "hf", {"device": "cpu"})
    gen.load(GeneratorContext(str(model_dir), tok, str(model_dir), len(tok), "float32"))
    out = gen.generate([ids], Sampling(max_new_tokens=8, temperature=0))
    assert out[0][0].token_ids[0] == top
    out = gen.generate([ids], Sampling(max_new_tokens=8, n=4, seed=0, temperature=2.0))
    assert all(t < len(tok) for o in out for s in o for t in s.token_ids)
