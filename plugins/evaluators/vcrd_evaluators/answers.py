"""Answer extraction shared by the ``math`` and ``exact`` evaluators: ``\\boxed{}`` (nested braces), the last
number, the text after the last ``=``, the last line."""

from __future__ import annotations

import re

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")


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
    """The last number of ``text`` (``-3``, ``1,000``, ``2.5``, ``3/4``; thousands commas dropped), or ``None``."""
    found = _NUMBER.findall(text)
    return found[-1].replace(",", "") if found else None


def boxed_or_last_number(text: str) -> str | None:
    """The Qwen2.5-Math extraction: the last ``\\boxed{}``, else the last number."""
    boxed = last_boxed(text)
    return boxed if boxed is not None else last_number(text)


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
}
