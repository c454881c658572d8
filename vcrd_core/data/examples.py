"""One training example as every stage after the prompt file sees it: the prompt text, the reference answer and
tests where the dataset has them, and its other fields.

The rollout store keeps it beside each rollout (one JSON column), the training batch carries it per sequence
(:class:`vcrd_core.rollouts.sequences.StreamBatch`), and judges receive it in
:attr:`vcrd_core.JudgeRequest.examples`: a judge that checks outcomes (a Monte-Carlo value judge) needs the
reference, the toy task's oracle needs the problem, a PRM renders the prompt text in its own format.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Example:
    """``id``: the prompt's row in its source (the store's ``prompt_index``, as text); ``prompt``: the prompt text
    before any template; ``reference``: the reference answer (``data.answer_field``) or None; ``tests``: the tests
    of a code problem (``data.tests_field``) or None; ``fields``: every other field of the row that JSON holds."""

    id: str
    prompt: str
    reference: Any = None
    tests: Any = None
    fields: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {"id": self.id, "prompt": self.prompt, "reference": self.reference, "tests": self.tests,
             "fields": dict(self.fields)},
            ensure_ascii=False, default=str,
        )  # fmt: skip

    @classmethod
    def from_json(cls, text: str) -> Example:
        data = json.loads(text)
        return cls(data["id"], data["prompt"], data.get("reference"), data.get("tests"), data.get("fields") or {})
