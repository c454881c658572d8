"""``pairwise`` against a real OpenAI-compatible HTTP server on 127.0.0.1 (stdlib ``http.server``) whose
judge reads the two responses and answers with scripted verdicts: order swapping, ties, a position-biased
judge, a reply without a verdict, server errors retried a bounded number of times, an endpoint that is down."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from vcrd_evaluators.pairwise_judge import JUDGE_SYSTEM, parse_verdict

from vcrd_core import create
from vcrd_core.errors import VcrdError
from vcrd_core.evaluation.evaluator import EvalItem

Judge = Callable[[str, str, str], str]


def content_judge(question: str, a: str, b: str) -> str:
    """Prefers the response saying GOOD; a tie when both or neither do; no verdict for NOVERDICT questions."""
    if "NOVERDICT" in question:
        return "Both are fine, I cannot decide."
    good_a, good_b = "GOOD" in a, "GOOD" in b
    verdict = "A" if good_a and not good_b else "B" if good_b and not good_a else "C"
    return f"Explanation: response {verdict} is better.\n[[{verdict}]]"


class JudgeServer:
    """``/v1/models`` and ``/v1/chat/completions``; ``fail_first`` requests get a 500."""

    def __init__(self, judge: Judge, fail_first: int = 0) -> None:
        self.judge = judge
        self.fail_first = fail_first
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send(200, {"object": "list", "data": [{"id": "judge", "object": "model", "owned_by": "t"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    failing = len(server.requests) <= server.fail_first
                if failing:
                    self._send(500, {"error": {"message": "scripted failure"}})
                    return
                user = body["messages"][1]["content"]
                q, a, b = re.fullmatch(
                    r"\[User Question\]\n(.*)\n\n\[Response A\]\n(.*)\n\n\[Response B\]\n(.*)", user, re.S
                ).groups()
                text = server.judge(q, a, b)
                self._send(
                    200,
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                        ],
                    },
                )

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server_factory() -> Iterator[Callable[..., JudgeServer]]:
    servers: list[JudgeServer] = []

    def make(judge: Judge = content_judge, fail_first: int = 0) -> JudgeServer:
        servers.append(JudgeServer(judge, fail_first))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _evaluator(url: str, **params: Any) -> Any:
    return create("evaluators", "pairwise", {"base_url": url, "model": "judge", "timeout": 5, **params})


ITEMS = [EvalItem("alpaca", i, f"question {i}", f"reference {i}") for i in range(4)]


def test_both_orders_ties_and_win_rate(server_factory: Callable[..., JudgeServer]) -> None:
    server = server_factory()
    ev = _evaluator(server.url, concurrency=3)
    ev.check()
    outputs = ["a GOOD answer", "a plain answer", "a GOOD one", "meh"]
    items = [*ITEMS[:3], EvalItem("alpaca", 3, "q", "the GOOD reference")]
    verdicts = ev.score(items, outputs, lambda n: None)
    # win both orders / tie both / win both / loss both
    assert [v.score for v in verdicts] == [1.0, 0.5, 1.0, 0.0]
    assert verdicts[0].details["verdicts"] == ["A", "B"]  # the model was A, then B
    assert verdicts[3].details["verdicts"] == ["B", "A"]
    assert len(server.requests) == 8
    first = server.requests[0]["messages"]
    assert first[0] == {"role": "system", "content": JUDGE_SYSTEM}
    assert "[[A]], [[B]], or [[C]] (tie)" in first[0]["content"]
    summary = ev.summarize(items, verdicts)
    assert summary["metric"] == "win_rate"
    assert summary["datasets"]["alpaca"]["win_rate"] == pytest.approx(2.5 / 4)
    assert summary["unparseable"] == 0


def test_a_position_biased_judge_gives_half(server_factory: Callable[..., JudgeServer]) -> None:
    server = server_factory(judge=lambda q, a, b: "[[A]]")
    verdicts = _evaluator(server.url).score(ITEMS, ["GOOD"] * 4, lambda n: None)
    assert [v.score for v in verdicts] == [0.5] * 4


def test_a_reply_without_a_verdict_is_counted_not_guessed(server_factory: Callable[..., JudgeServer]) -> None:
    server = server_factory()
    items = [EvalItem("d", 0, "NOVERDICT please", "ref"), EvalItem("d", 1, "fine", "ref")]
    ev = _evaluator(server.url)
    verdicts = ev.score(items, ["GOOD", "GOOD"], lambda n: None)
    assert verdicts[0].score is None
    assert verdicts[0].error == "2 of 2 judgements had no verdict"
    assert verdicts[0].details["judgements"][0] == "Both are fine, I cannot decide."
    summary = ev.summarize(items, verdicts)
    assert summary["datasets"]["d"] == {
        "win_rate": 1.0,
        "n": 2,
        "graded": 1,
        "errors": 1,
        "unparseable": 2,
        "judgements": 4,
    }
    assert summary["unparseable"] == 2


def test_parse_verdict_takes_the_last() -> None:
    assert parse_verdict("[[A]] at first, but on reflection [[ B ]]") == "B"
    assert parse_verdict("A is better") is None
    assert parse_verdict(None) is None


def test_server_errors_are_retried_a_bounded_number_of_times(server_factory: Callable[..., JudgeServer]) -> None:
    server = server_factory(fail_first=2)
    verdicts = _evaluator(server.url, max_retries=2, concurrency=1).score(ITEMS[:1], ["GOOD"], lambda n: None)
    assert verdicts[0].score == 1.0
    assert len(server.requests) == 4  # 2 failures, then both orders
    down = server_factory(fail_first=100)
    with pytest.raises(VcrdError, match=r"did not answer after 2 tries") as err:
        _evaluator(down.url, max_retries=1, concurrency=1).score(ITEMS[:1], ["GOOD"], lambda n: None)
    assert len(down.requests) == 2
    assert "\n" not in str(err.value)


def test_an_endpoint_that_is_down_is_one_line_at_check() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ev = _evaluator(f"http://127.0.0.1:{port}/v1", max_retries=1, timeout=0.5)
    with pytest.raises(VcrdError) as err:
        ev.check()
    assert str(err.value).startswith(
        f"evaluator 'pairwise': the judge endpoint http://127.0.0.1:{port}/v1 did not answer after 2 tries: "
    )
    assert "\n" not in str(err.value)
