"""``pairwise``: the win rate of the evaluated model against reference responses, judged by an LLM behind an
OpenAI-compatible endpoint (a local vLLM server, or any such service) with the paper's judge prompt (§10.3.1).

Every problem is judged in both orders (model as A, then as B) to cancel position bias; a win counts 1, a
tie (``[[C]]``) 0.5, a loss 0, and the problem's score is the mean over the orders whose verdict parsed. A
reply with no verdict is counted and reported (``unparseable``), never guessed; a problem with no parsed
verdict at all is left out of the win rate and counted as ungraded. The endpoint, the judge model, the
concurrency, the timeout and the (bounded) retries are configuration; an endpoint that does not answer
after its retries stops the evaluation with one line.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import Field

from vcrd_core.errors import VcrdError
from vcrd_core.evaluation.evaluator import EvalItem, Evaluator, EvaluatorParams, Verdict

#: The paper's judge prompt (§10.3.1): the system part, then the question and both responses.
JUDGE_SYSTEM = (
    "Act as an impartial judge and evaluate which of two assistant responses better answers the user question "
    "shown below. Your judgment should consider correctness, instruction compliance, coherence, clarity, and "
    "overall helpfulness. Ignore superficial stylistic differences unless they affect content quality. Read both "
    "responses carefully and provide a brief explanation of your choice. To avoid position bias, do not let the "
    "order of presentation influence your decision. After your explanation, output your verdict strictly in one "
    "of the following formats: [[A]], [[B]], or [[C]] (tie)."
)
JUDGE_USER = "[User Question]\n{question}\n\n[Response A]\n{answer_A}\n\n[Response B]\n{answer_B}"

_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")


def parse_verdict(text: str | None) -> str | None:
    """The last ``[[A]]``, ``[[B]]`` or ``[[C]]`` of a judgement, or ``None``."""
    found = _VERDICT.findall(text or "")
    return found[-1] if found else None


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class PairwiseEvaluator(Evaluator):
    """Win rate against reference responses, judged pairwise (both orders) by an OpenAI-compatible LLM."""

    name = "pairwise"
    template = "chat"
    metric = "win_rate"

    class Params(EvaluatorParams):
        base_url: str = Field(description="The endpoint, e.g. http://127.0.0.1:8000/v1 (a vLLM server).")
        model: str = Field(description="The judge model's name at that endpoint.")
        api_key: str = Field("EMPTY", description="API key (a local vLLM server takes any).")
        api_key_env: str | None = Field(None, description="Read the API key from this environment variable.")
        concurrency: int = Field(8, gt=0, description="Judge requests in flight at once.")
        timeout: float = Field(60.0, gt=0, description="Seconds per request.")
        max_retries: int = Field(2, ge=0, description="Retries of a failed request (with back-off), then stop.")
        judge_max_tokens: int = Field(1024, gt=0)
        judge_temperature: float = Field(0.0, ge=0)

    def _client(self) -> Any:
        try:
            import openai
        except ImportError:
            raise VcrdError("evaluator 'pairwise' needs the openai client: pip install 'vcrd[eval]'") from None
        p = self.params
        key = p.api_key
        if p.api_key_env:
            key = os.environ.get(p.api_key_env, "")
            if not key:
                raise VcrdError(f"evaluator 'pairwise': the environment variable {p.api_key_env} is not set")
        return openai.OpenAI(base_url=p.base_url, api_key=key, timeout=p.timeout, max_retries=p.max_retries)

    def _unreachable(self, exc: Exception) -> VcrdError:
        tries = self.params.max_retries + 1
        return VcrdError(
            f"evaluator 'pairwise': the judge endpoint {self.params.base_url} did not answer after {tries} "
            f"tries: {_reason(exc)}"
        )

    def check(self) -> None:
        """The endpoint answers (``GET /models``) before any model is loaded."""
        import openai

        try:
            self._client().models.list()
        except openai.APIError as exc:
            raise self._unreachable(exc) from None

    def judge(self, client: Any, question: str, a: str, b: str) -> str:
        """One judgement's text (``a`` shown as Response A, ``b`` as Response B)."""
        import openai

        try:
            reply = client.chat.completions.create(
                model=self.params.model,
                messages=[
                    {"role": "system", "content": JUDGE_SYSTEM},
                    {"role": "user", "content": JUDGE_USER.format(question=question, answer_A=a, answer_B=b)},
                ],
                max_tokens=self.params.judge_max_tokens,
                temperature=self.params.judge_temperature,
            )
        except openai.APIError as exc:
            raise self._unreachable(exc) from None
        return reply.choices[0].message.content or ""

    def grade_pair(self, client: Any, item: EvalItem, output: str) -> Verdict:
        reference = str(item.reference)
        first = self.judge(client, item.prompt, output, reference)  # the model is A
        second = self.judge(client, item.prompt, reference, output)  # the model is B
        verdicts = [parse_verdict(first), parse_verdict(second)]
        points = {0: {"A": 1.0, "B": 0.0, "C": 0.5}, 1: {"A": 0.0, "B": 1.0, "C": 0.5}}
        scores = [points[k][v] for k, v in enumerate(verdicts) if v is not None]
        unparseable = verdicts.count(None)
        details = {"verdicts": verdicts, "unparseable": unparseable, "judgements": [first, second]}
        error = f"{unparseable} of 2 judgements had no verdict" if unparseable else None
        return Verdict(sum(scores) / len(scores) if scores else None, verdicts, error, details)

    def score(self, items: list[EvalItem], outputs: list[str], advance: Any) -> list[Verdict]:
        client = self._client()

        def one(pair: tuple[EvalItem, str]) -> Verdict:
            verdict = self.grade_pair(client, *pair)
            advance(1)
            return verdict

        with ThreadPoolExecutor(max_workers=self.params.concurrency) as pool:
            return list(pool.map(one, zip(items, outputs, strict=True)))

    def summarize(self, items: list[EvalItem], verdicts: list[Verdict]) -> dict[str, Any]:
        out = super().summarize(items, verdicts)
        for d in out["datasets"].values():
            d["unparseable"] = 0
            d["judgements"] = 2 * d["n"]
        for item, verdict in zip(items, verdicts, strict=True):
            out["datasets"][item.dataset]["unparseable"] += verdict.details["unparseable"]
        out["unparseable"] = sum(d["unparseable"] for d in out["datasets"].values())
        return out
