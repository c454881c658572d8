"""A character-level tokenizer for the toy arithmetic task, built locally (no hub download).

Why char-level: every character of the grammar (:data:`vcrd_arithmetic.grammar.ALPHABET`) is one
token, so a decision point is one character and the ``oracle`` judge's "valid next character" is
exactly "valid next token". Ids: ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, then ``0``-``9``, ``+``, ``-``,
``*``, ``=`` (17 in all). Nothing is added automatically when encoding: the data pipeline places
``<bos>``/``<eos>`` itself, so ``"2*3=6"`` encodes to exactly five ids.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from vcrd_arithmetic.grammar import ALPHABET

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIAL_TOKENS = (PAD, BOS, EOS)


def char_vocabulary() -> dict[str, int]:
    """Token -> id: the three special tokens, then the alphabet in order."""
    return {token: i for i, token in enumerate((*SPECIAL_TOKENS, *ALPHABET))}


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """The toy task's tokenizer as a ``transformers`` fast tokenizer (``save_pretrained`` and
    ``from_pretrained`` work on a local directory).

    Text outside the alphabet cannot be encoded (there is no unknown token, on purpose: a stray
    character in the data is a bug to surface, not a token to learn).
    """
    vocab = char_vocabulary()
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    # Every character is its own pre-token; WordLevel then maps it to its id.
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()  # join tokens without spaces
    core.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        clean_up_tokenization_spaces=False,
    )
