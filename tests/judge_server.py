"""A scriptable OpenAI-compatible chat server on 127.0.0.1, for testing the ``llm`` judge over real HTTP.

    server = ScriptedJudgeServer(answer=prefers("marker")).start()   # port 0: a free port
    server.base_url                    # "http://127.0.0.1:PORT/v1"
    server.inject("rate_limit", 1)     # the next request gets 429 with Retry-After: 1
    server.records                     # every request it got: status sent, fault, auth header, body
    server.stop()                      # after this, connections are refused

Behaviours are functions (request json) -> answer text. Faults apply to the next N requests in order
of arrival: ``rate_limit`` (429 + Retry-After: 1), ``server_error`` (500), ``unavailable`` (503),
``slow`` (answers only after ``slow_s`` seconds, past a short client timeout), ``garbage`` (200 with
"I like both"). ``outage(True)`` makes every request 503 until ``outage(False)``.

Unlike platform/overopt/evaluate/local_judge.py (a stand-in judge for CPU runs) this one exists to
misbehave on cue and to keep a record the tests compare with the client's counts.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("rate_limit", "server_error", "unavailable", "slow", "garbage")
GARBAGE = "I like both."

# The default template's layout (config.DEFAULT_JUDGE_TEMPLATE): "Summary A:\n...\n\nSummary B:\n...\n\n".
_SUMMARIES = re.compile(r"Summary A:\n(?P<a>.*?)\n\nSummary B:\n(?P<b>.*?)\n\n", re.DOTALL)


def verdict(choice: str) -> str:
    return f"Comparison: summary {choice} is better.\nPreferred: {choice}"


def _summaries(request: dict) -> tuple[str, str]:
    text = "\n".join(str(m.get("content", "")) for m in request["messages"])
    match = _SUMMARIES.search(text)
    if match is None:
        raise ValueError("no 'Summary A' / 'Summary B' sections in the request")
    return match["a"], match["b"]


def always(choice: str) -> Callable[[dict], str]:
    """A judge with pure position bias: always the same letter."""
    return lambda request: verdict(choice)


def prefers(marker: str) -> Callable[[dict], str]:
    """Prefers the summary containing ``marker``; neither or both -> "A" (position bias on a tie)."""

    def answer(request: dict) -> str:
        a, b = _summaries(request)
        return verdict("B" if marker in b and marker not in a else "A")

    return answer


def longer(request: dict) -> str:
    a, b = _summaries(request)
    return verdict("B" if len(b) > len(a) else "A")


@dataclass
class Record:
    arrived: float  # time.monotonic() when the request arrived
    path: str
    authorization: str | None
    headers: dict
    body: dict | None
    status: int = 0  # the status the server sent (or tried to send: a slow answer's client may be gone)
    fault: str | None = None
    usage: dict = field(default_factory=dict)  # the usage block of a 200 answer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for a slow handler still sleeping

    def handle_error(self, request, client_address):  # a client that timed out and left: expected here
        pass


class ScriptedJudgeServer:
    def __init__(self, answer: Callable[[dict], str] | None = None, slow_s: float = 2.0, model: str = "scripted-judge"):
        self.answer = answer or always("A")  # default: pure position bias
        self.slow_s = slow_s
        self.model = model
        self.records: list[Record] = []
        self._faults: deque[str] = deque()
        self._outage = False
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.httpd = _Server(("127.0.0.1", 0), self._handler())
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread: threading.Thread | None = None

    # -- scripting --------------------------------------------------------------------------------

    def inject(self, fault: str, n: int = 1) -> None:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; valid: {FAULTS}")
        with self._lock:
            self._faults.extend([fault] * n)

    def outage(self, on: bool = True) -> None:
        with self._lock:
            self._outage = on

    def reset(self, answer: Callable[[dict], str] | None = None) -> None:
        """Forget records and pending faults, end an outage; optionally a new behaviour."""
        with self._lock:
            self.records.clear()
            self._faults.clear()
            self._outage = False
            if answer is not None:
                self.answer = answer

    def statuses(self) -> list[int]:
        with self._lock:
            return [r.status for r in self.records]

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> ScriptedJudgeServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="judge-server")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()  # the listening socket is gone: new connections are refused

    # -- HTTP -------------------------------------------------------------------------------------

    def _next_fault(self) -> str | None:
        with self._lock:
            if self._outage:
                return "unavailable"
            return self._faults.popleft() if self._faults else None

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet: the records are the log
                pass

            def _send(self, record: Record, status: int, body: dict, headers: dict | None = None) -> None:
                record.status = status
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout) and closed the connection
                    pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                record = Record(time.monotonic(), self.path, self.headers.get("Authorization"), dict(self.headers.items()), body)
                with server._lock:
                    server.records.append(record)
                if self.path.rstrip("/") != "/v1/chat/completions" or body is None:
                    self._send(record, 404 if body is not None else 400, {"error": {"message": f"no route {self.path}"}})
                    return
                fault = record.fault = server._next_fault()
                if fault == "rate_limit":
                    self._send(record, 429, {"error": {"message": "rate limited", "type": "rate_limit"}}, {"Retry-After": "1"})
                    return
                if fault == "server_error":
                    self._send(record, 500, {"error": {"message": "internal error"}})
                    return
                if fault == "unavailable":
                    self._send(record, 503, {"error": {"message": "service unavailable"}})
                    return
                if fault == "slow":
                    server._stopping.wait(server.slow_s)
                text = GARBAGE if fault == "garbage" else server.answer(body)
                prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
                usage = {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": len(text.split()),
                    "total_tokens": prompt_tokens + len(text.split()),
                }
                record.usage = usage
                self._send(
                    record,
                    200,
                    {
                        "id": f"chatcmpl-{time.time_ns()}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model", server.model),
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                        "usage": usage,
                    },
                )

        return Handler
