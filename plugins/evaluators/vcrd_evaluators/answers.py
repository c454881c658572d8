"""Answer extraction shared by the ``math`` and ``exact`` evaluators: ``\\boxed{}`` (nested braces), an answer
given in words ("The answer is $\\frac{1}{2}$."), the last number, the text after the last ``=``, the last line.

:func:`qwen25_math_answer` is the ``math`` evaluator's order, Qwen2.5-Math's (``evaluation/parser.py``,
``extract_answer``): the last ``\\boxed{}``, else what follows the last "the answer is", else what follows
the last "final answer is", else the last number. LaTeX thousands separators (``1\\,000\\,000``,
``1{,}000``) are joined first (:func:`join_thousands`): math-verify would read ``1\\,000`` as ``1*0*0``."""

from __future__ import annotations

import re

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")
# a thin/medium/thick space, a backslash-space, a negative space, a tie or a braced comma between digit groups
_THOUSANDS = re.compile(r"(?<=\d)(?:\\[,;: !]|~|\{,\}|\{\\,\})(?=\d{3}(?!\d))")
# Qwen2.5-Math matches "he answer is" (The / the) before "final answer is"
_THE_ANSWER = re.compile(r"\bthe\s+answer\s+is\b\s*:?", re.IGNORECASE)
_FINAL_ANSWER = re.compile(r"\bfinal\s+answer\s+is\b\s*:?", re.IGNORECASE)
_MATH_SPAN = re.compile(r"\s*(?:\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\])", re.DOTALL)


def join_thousands(text: str) -> str:
    """``text`` with LaTeX thousands separators between digit groups removed: ``1\\,000\\,000`` -> ``1000000``,
    ``1{,}000`` -> ``1000`` (also ``\\;``, ``\\:``, ``\\ ``, ``\\!``, ``~``); a separator not followed by exactly
    three digits is kept."""
    return _THOUSANDS.sub("", text)


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces balanced; ``\\boxed 5`` too),
    or ``None``."""
    matches = list(_BOXED.finditer(text))
    for match in reversed(matches):
        i = match.end()
        if i < len(text) and text[i] == "{":
            depth = 0
            for j in range(i, len(text)):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        return text[i + 1 : j].strip()
            continue  # unbalanced: try an earlier one
        word = re.match(r"[^\s$]+", text[i:])
        if word:
            return word.group(0)
    return None


def last_number(text: str) -> str | None:
    """The last number of ``text`` (``-3``, ``1,000``, ``1\\,000``, ``2.5``, ``3/4``; thousands separators
    dropped), or ``None``."""
    found = _NUMBER.findall(join_thousands(text))
    return found[-1].replace(",", "") if found else None


def after_answer_phrase(text: str) -> str | None:
    """The answer given in words: what follows the last "the answer is" (else the last "final answer is"),
    case-insensitive, an optional colon skipped. A math span right after it (``$...$``, ``$$...$$``,
    ``\\(...\\)``, ``\\[...\\]``) is the answer; otherwise the rest of the sentence (up to a line break or a
    period that ends it). ``None`` without such a phrase or with nothing after it."""
    for phrase in (_THE_ANSWER, _FINAL_ANSWER):
        matches = list(phrase.finditer(text))
        if matches:
            break
    else:
        return None
    rest = text[matches[-1].end() :]
    span = _MATH_SPAN.match(rest)
    if span:
        answer = next(g for g in span.groups() if g is not None)
    else:
        answer = re.split(r"\n|\.(?=\s|$)", rest.strip(), maxsplit=1)[0]
    answer = answer.strip().rstrip(".").strip()
    return answer or None


def boxed_or_last_number(text: str) -> str | None:
    """The Qwen2.5-Math extraction: the last ``\\boxed{}``, else the last number."""
    boxed = last_boxed(text)
    return boxed if boxed is not None else last_number(text)


def qwen25_math_answer(text: str) -> str | None:
    """The ``math`` evaluator's extraction, Qwen2.5-Math's order: the last ``\\boxed{}``, else the answer given in
    words (:func:`after_answer_phrase`), else the last number; thousands separators joined."""
    text = join_thousands(text)
    for extract in (last_boxed, after_answer_phrase, last_number):
        answer = extract(text)
        if answer is not None:
            return answer
    return None


def after_last_equals(text: str) -> str | None:
    """The text after the last ``=`` (the whole text when it has none), stripped; ``None`` when empty."""
    out = text.rsplit("=", 1)[-1].strip()
    return out or None


def last_line(text: str) -> str | None:
    """The last non-blank line, stripped."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else None


def strip(text: str) -> str | None:
    return text.strip() or None


#: Extractions ``exact`` knows by name (anything else is ``module:function``).
EXTRACTORS = {
    "strip": strip,
    "last_line": last_line,
    "after_last_equals": after_last_equals,
    "last_number": last_number,
    "boxed": last_boxed,
    "boxed_or_last_number": boxed_or_last_number,
    "qwen25_math": qwen25_math_answer,
}
