"""Training examples from rollouts: one example per (prompt, sample) slot, holding the rollouts its streams need.

The trainer reads rollouts through a small explicit interface, so that it does not depend on how they are
stored: a *rollout row* is a mapping with

* ``prompt_index`` and ``sample_index`` (ints): the slot; the teacher's and the student's rollouts of one slot
  form one example;
* ``role``: ``"teacher"`` (the teacher-prefix stream's sequences) or ``"student"`` (the student-prefix stream's);
* ``prompt_token_ids`` and ``response_token_ids`` (lists of ints, the response as generated, EOS included);
* optionally ``weights`` (a list of floats, one per response token: that role's stream weight ``w_t`` at the
  decision point ``t`` of that token), as ``vcrd score`` writes them into the rollout store (offline mode);
* optionally ``example`` (the JSON of a :class:`~vcrd_core.data.examples.Example`: the prompt text, reference
  answer, tests and other fields of the dataset row), as ``vcrd rollouts`` stores it; judges receive it.

:func:`rows_from_store` reads such rows from the rollout store (``vcrd_core.rollouts.store``). A sequence is the
prompt followed by its response, right-padded in a batch, cut at ``data.max_length`` tokens (the response is
shortened; the prompt is never cut: an example whose prompt leaves no room for a response token is left out and
counted, ``RolloutExamples.too_long``, and the run summary reports it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from vcrd_core.data.examples import Example
from vcrd_core.decision_points import Stream
from vcrd_core.errors import ConfigError, VcrdError
from vcrd_core.rollouts.sequences import RolloutSequence, StreamBatch, TrainBatch
from vcrd_core.rollouts.store import RolloutStore
from vcrd_core.rollouts.teacher_cache import TeacherCache, sequence_digest

#: The rollout role whose sequences each stream trains on.
STREAM_ROLE: dict[str, str] = {s.value: s.role for s in Stream}


class RolloutExamples(torch.utils.data.Dataset):
    """Examples for the enabled ``streams``: example ``i`` holds, per stream, one rollout of its role.

    Slots that lack a rollout of a role some stream needs are left out (counted in :attr:`incomplete`).
    ``weights`` are read from the rows only when ``with_weights`` (offline mode); a needed row without them is
    refused. :meth:`set_weights` installs weights computed at run start (the online static cache).
    """

    def __init__(
        self,
        rows: Iterable[Mapping[str, Any]],
        streams: Sequence[str],
        *,
        max_length: int,
        with_weights: Sequence[str] = (),
        roles: Mapping[str, str] | None = None,
    ) -> None:
        self.streams = list(streams)
        #: The rollout role each stream reads (default its own; on_policy.fallback: teacher for the student prefix).
        self.roles = {s: (roles or {}).get(s, STREAM_ROLE[s]) for s in self.streams}
        slots: dict[tuple[int, int], dict[str, RolloutSequence]] = {}
        too_long: set[tuple[int, int]] = set()
        #: Per (slot, stream), the CRC-32 of the whole rollout's token ids (read by :meth:`set_teacher_cache`).
        self._digests: dict[tuple[tuple[int, int], str], int] = {}
        for row in rows:
            for stream in [s for s in self.streams if self.roles[s] == row["role"]]:
                self._add(row, stream, slots, too_long, with_weights, max_length)
                slot = (int(row["prompt_index"]), int(row.get("sample_index") or 0))
                self._digests[(slot, stream)] = sequence_digest(row["prompt_token_ids"], row["response_token_ids"])
        complete = sorted(k for k, v in slots.items() if k not in too_long and all(s in v for s in self.streams))
        #: (prompt, sample) slots left out because a prompt fills data.max_length
        self.too_long = len(too_long)
        self.incomplete = len(slots) - len(complete) - len(too_long & set(slots))
        self.slots = complete
        self.items = [slots[k] for k in complete]
        if not self.items:
            raise VcrdError(
                f"no training example: no (prompt, sample) slot has rollouts of every role the enabled streams "
                f"need ({', '.join(self.roles[s] for s in self.streams)})"
            )

    @staticmethod
    def _add(
        row: Mapping[str, Any],
        stream: str,
        slots: dict[tuple[int, int], dict[str, RolloutSequence]],
        too_long: set[tuple[int, int]],
        with_weights: Sequence[str],
        max_length: int,
    ) -> None:
        """Add ``row``'s sequence to ``stream`` of its slot (cut at ``max_length``; an overlong prompt: counted)."""
        role = row["role"]
        prompt, response = [int(t) for t in row["prompt_token_ids"]], [int(t) for t in row["response_token_ids"]]
        slot = (int(row["prompt_index"]), int(row.get("sample_index") or 0))
        if not prompt:
            raise VcrdError(f"rollout {role} {slot}: empty prompt (a decision point needs a preceding token)")
        weights = None
        if stream in with_weights:
            weights = row.get("weights")
            if weights is None:
                raise VcrdError(
                    f"rollout {role} of prompt {slot[0]} sample {slot[1]} has no weights; offline mode needs "
                    "scored rollouts: run `vcrd score CONFIG` first"
                )
            weights = [float(w) for w in weights]
            if len(weights) != len(response):
                raise VcrdError(
                    f"rollout {role} of prompt {slot[0]} sample {slot[1]}: {len(weights)} weights for "
                    f"{len(response)} response tokens"
                )
        keep = max_length - len(prompt)
        if keep <= 0:  # no room for one response token: no decision point; the prompt is never cut
            too_long.add(slot)
            return
        if weights is not None:
            weights = weights[:keep]
        example = Example.from_json(row["example"]) if row.get("example") else None
        slots.setdefault(slot, {})[stream] = RolloutSequence(prompt, response[:keep], weights, example)

    def hold_out(self, n: int) -> list[RolloutSequence]:
        """Remove the last ``n`` examples from training and return their first stream's sequences (a validation set);
        at least one example stays."""
        if n <= 0:
            return []
        if n >= len(self.items):
            raise VcrdError(
                f"on_policy.validation_examples: {n} held out of {len(self.items)} training examples leaves none to "
                "train on"
            )
        held = [item[self.streams[0]] for item in self.items[-n:]]
        self.items, self.slots = self.items[:-n], self.slots[:-n]
        return held

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"index": i, **{s: self.items[i][s] for s in self.streams}}

    def set_teacher_cache(self, cache: TeacherCache) -> None:
        """Attach every sequence's cached teacher top-k (its first ``len(response)`` decision points: a response cut
        at ``data.max_length`` keeps its first ones); a rollout the cache lacks is refused in one line."""
        for slot, item in zip(self.slots, self.items, strict=True):
            for stream, seq in item.items():
                digest = self._digests.get((slot, stream))
                seq.teacher_topk = cache.sparse(self.roles[stream], slot[0], slot[1], len(seq.response), digest)

    def set_weights(self, stream: str, weights: Mapping[int, list[float]]) -> None:
        """Install per-response-token weights of ``stream`` for every example (the online static cache)."""
        for i, item in enumerate(self.items):
            item[stream].weights = list(weights[i])


class RolloutCollator:
    """Pads a list of examples into a :class:`~vcrd_core.rollouts.sequences.TrainBatch`: per stream one
    :class:`~vcrd_core.rollouts.sequences.StreamBatch` (ids, masks, decision points, prompt lengths, each
    sequence's example, the dataset indices and, when the examples carry them, the weights)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = int(pad_token_id)

    def __call__(self, examples: list[dict[str, Any]]) -> TrainBatch:
        index = [int(e["index"]) for e in examples]
        return TrainBatch(
            {
                stream.value: StreamBatch.of([e[stream.value] for e in examples], self.pad_token_id, index=index)
                for stream in Stream
                if stream.value in examples[0]
            }
        )


def rows_from_store(store: str | Path, roles: Sequence[str], *, need_weights: Sequence[str] = ()) -> list[dict]:
    """The rows of ``roles`` in the rollout store at ``store``; a store whose rows of a role in ``need_weights``
    have no weights (not scored) is refused with one line (offline mode, before any model is loaded)."""
    st = RolloutStore(store)
    if not Path(store).is_dir():
        raise ConfigError("rollouts.store", f"rollout store '{store}' does not exist; run `vcrd rollouts CONFIG` first")
    st.manifest()
    table = st.read(roles)
    if table.num_rows == 0:
        raise ConfigError("rollouts.store", f"rollout store '{store}' holds no {' or '.join(roles)} rollouts")
    rows = table.to_pylist()
    for role in need_weights:
        unscored = sum(1 for r in rows if r["role"] == role and r.get("weights") is None)
        if unscored:
            raise ConfigError(
                "scoring.mode",
                f"offline mode reads weights from the rollout store, but {unscored} {role} rollouts in '{store}' "
                "have no scores; run `vcrd score CONFIG` first (or use scoring.mode: online)",
            )
    return rows
