"""The toy task's char-level tokenizer: ids, round trips, padding, saving and loading."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from vcrd_arithmetic import grammar as A
from vcrd_arithmetic.char_tokenizer import build_char_tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    return build_char_tokenizer()


def test_vocabulary_is_three_specials_then_the_alphabet(tokenizer: PreTrainedTokenizerBase) -> None:
    assert len(tokenizer) == 17
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token) == ("<pad>", "<bos>", "<eos>")
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.convert_tokens_to_ids(list("0123456789+-*=")) == list(range(3, 17))


def test_each_character_is_one_id_and_nothing_is_added(tokenizer: PreTrainedTokenizerBase) -> None:
    ids = tokenizer("2*3=6")["input_ids"]
    assert ids == [5, 15, 6, 16, 9]
    assert tokenizer.convert_ids_to_tokens(ids) == ["2", "*", "3", "=", "6"]


def test_special_tokens_written_in_text_are_single_ids(tokenizer: PreTrainedTokenizerBase) -> None:
    assert tokenizer("<bos>2+3=5<eos>")["input_ids"] == [1, 5, 13, 6, 16, 8, 2]


def test_decode_round_trips_problems_and_derivations(tokenizer: PreTrainedTokenizerBase) -> None:
    rng = random.Random(0)
    for _ in range(50):
        prompt = A.random_problem(rng, rng.randint(2, 5))
        text = prompt + A.canonical_derivation(prompt)
        ids = tokenizer(text)["input_ids"]
        assert len(ids) == len(text)
        assert tokenizer.decode(ids) == text
    with_specials = [1, *tokenizer("1-2=-1")["input_ids"], 2, 0]
    assert tokenizer.decode(with_specials) == "<bos>1-2=-1<eos><pad>"
    assert tokenizer.decode(with_specials, skip_special_tokens=True) == "1-2=-1"


@pytest.mark.parametrize("side", ["left", "right"])
def test_batches_pad_with_the_pad_id_on_either_side(tokenizer: PreTrainedTokenizerBase, side: str) -> None:
    batch = tokenizer(["2*3=", "2+33*4="], padding=True, padding_side=side)
    short = [5, 15, 6, 16]
    expected = [*short, 0, 0, 0] if side == "right" else [0, 0, 0, *short]
    assert batch["input_ids"][0] == expected
    assert batch["attention_mask"][0] == [int(i != 0) for i in expected]


def test_save_and_load_from_a_directory_give_the_same_tokenizer(
    tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert len(loaded) == 17
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 1, 2)
    text = "<bos>9-8*7=9-56=-47<eos>"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.decode(loaded(text)["input_ids"]) == text


def test_text_outside_the_alphabet_cannot_be_encoded(tokenizer: PreTrainedTokenizerBase) -> None:
    with pytest.raises(Exception, match="UNK"):
        tokenizer("2 x 3")
