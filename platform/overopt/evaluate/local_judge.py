"""A small OpenAI-compatible judge server on 127.0.0.1: a transparent stand-in for an LLM judge, on CPU
machines and in the tests of the ``llm`` judge.

    python jobs/serve_local_judge.py --port 8765       # then judge: {type: llm, base_url: http://127.0.0.1:8765/v1}

    server = JudgeServer().start()     # in Python; port 0 (the default): a free port
    server.base_url                    # "http://127.0.0.1:PORT/v1"
    server.inject("rate_limit", 1)     # the next request gets 429 with Retry-After: 1
    server.records                     # every chat request it got: status sent, fault, auth header, body, usage
    server.stop()                      # after this, connections are refused

It speaks ``POST /v1/chat/completions`` (and ``GET /v1/models``), reads the pairwise prompt the ``llm``
judge sends (the default template: "Post:", "Summary A:", "Summary B:"), and answers in the
template's format (``Comparison: ...`` then ``Preferred: A|B``). Its preference, ``overlap_verdict``,
is a plain rule, not a model: the summary that names more of the post's own words wins, each word not
in the post costs half a word, each repeat a fifth. Another rule is any function of the prompt's text
(``answer``; ``always("A")``: pure position bias). It exists so that the real HTTP path (client,
retries, position swap, audit) runs end to end without a GPU or an API key; a real judge is a vLLM
server (``vllm serve MODEL``) or a hosted API behind the same URL shape.

To test a client against a server that misbehaves, faults apply to the next requests in order of
arrival (``inject``): ``rate_limit`` (429 + Retry-After: 1), ``server_error`` (500), ``unavailable``
(503), ``slow`` (answers only after ``slow_s`` seconds), ``garbage`` (200 with "I like both.");
``outage(True)`` makes every request 503 until ``outage(False)``; ``reset()`` forgets records and
faults.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECTIONS = re.compile(r"Post:\n(?P<post>.*?)\n\nSummary A:\n(?P<a>.*?)\n\nSummary B:\n(?P<b>.*?)\n\n", re.S)
FAULTS = ("rate_limit", "server_error", "unavailable", "slow", "garbage")
GARBAGE = "I like both."  # the answer of a "garbage" fault: no verdict in it


def overlap_score(post: str, summary: str) -> float:
    """Distinct summary words found in the post, minus 0.5 per word not in it, minus 0.2 per repeat."""
    post_words, words = set(post.split()), summary.split()
    found = len({w for w in words if w in post_words})
    return found - 0.5 * sum(w not in post_words for w in words) - 0.2 * (len(words) - len(set(words)))


def overlap_verdict(prompt: str) -> str:
    """The answer to one pairwise prompt; ties go to A (a position bias the swap exposes as a tie)."""
    match = SECTIONS.search(prompt)
    if match is None:
        return "I cannot find the post and the two summaries in this request."
    a, b = overlap_score(match["post"], match["a"]), overlap_score(match["post"], match["b"])
    choice = "A" if a >= b else "B"
    return f"Comparison: summary {choice} names more of the post's own words ({a:.1f} vs {b:.1f}).\nPreferred: {choice}"


def verdict(choice: str) -> str:
    """A plain answer in the template's format preferring ``choice`` ("A" or "B")."""
    return f"Comparison: summary {choice} is better.\nPreferred: {choice}"


def always(choice: str) -> Callable[[str], str]:
    """A judge with pure position bias, always the same letter: the position swap makes every comparison a tie."""
    return lambda prompt: verdict(choice)


@dataclass
class Record:
    """One chat request the server got, and what it sent back."""

    arrived: float  # time.monotonic() when the request arrived
    path: str
    authorization: str | None
    headers: dict
    body: dict | None  # the request's JSON (None: not JSON)
    status: int = 0  # the status sent (or tried: a slow answer's client may be gone)
    fault: str | None = None
    usage: dict = field(default_factory=dict)  # the usage block of a 200 answer


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() does not wait for a slow answer still sleeping

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], OSError):  # a client that gave up (timeout) and left
            return
        super().handle_error(request, client_address)


class JudgeServer:
    """A threaded HTTP server on 127.0.0.1 answering chat completions with ``answer(prompt_text)``."""

    def __init__(self, answer: Callable[[str], str] = overlap_verdict, port: int = 0, model: str = "local-judge", slow_s: float = 2.0):
        self.answer, self.model, self.slow_s = answer, model, slow_s
        self.records: list[Record] = []
        self._faults: deque[str] = deque()
        self._outage = False
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.httpd = _HTTPServer(("127.0.0.1", port), self._handler())
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread: threading.Thread | None = None

    # -- faults and records -----------------------------------------------------------------------

    def inject(self, fault: str, n: int = 1) -> None:
        """``fault`` for each of the next ``n`` requests (after those already injected)."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; valid: {FAULTS}")
        with self._lock:
            self._faults.extend([fault] * n)

    def outage(self, on: bool = True) -> None:
        """Every request gets 503 while on."""
        with self._lock:
            self._outage = on

    def reset(self, answer: Callable[[str], str] | None = None) -> None:
        """Forget the records and pending faults, end an outage; optionally answer by another rule."""
        with self._lock:
            self.records.clear()
            self._faults.clear()
            self._outage = False
            if answer is not None:
                self.answer = answer

    def statuses(self) -> list[int]:
        """The status sent to each request, in order of arrival."""
        with self._lock:
            return [r.status for r in self.records]

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> JudgeServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="judge-server")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes slow answers
        self.httpd.shutdown()
        self.httpd.server_close()  # the listening socket is gone: new connections are refused

    # -- HTTP -------------------------------------------------------------------------------------

    def _next_fault(self) -> str | None:
        with self._lock:
            if self._outage:
                return "unavailable"
            return self._faults.popleft() if self._faults else None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet: the records are the log
                pass

            def _send(self, status: int, body: dict, record: Record | None = None, headers: dict | None = None) -> None:
                if record is not None:
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

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                headers = dict(self.headers.items())
                record = Record(time.monotonic(), self.path, self.headers.get("Authorization"), headers, body)
                with server._lock:
                    server.records.append(record)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}}, record)
                    return
                if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                    self._send(400, {"error": {"message": "bad request: not a JSON object with a list of messages"}}, record)
                    return
                prompt = "\n".join(str(m.get("content", "")) for m in body["messages"] if isinstance(m, dict))
                fault = record.fault = server._next_fault()
                if fault == "rate_limit":
                    self._send(429, {"error": {"message": "rate limited", "type": "rate_limit"}}, record, {"Retry-After": "1"})
                    return
                if fault == "server_error":
                    self._send(500, {"error": {"message": "internal error"}}, record)
                    return
                if fault == "unavailable":
                    self._send(503, {"error": {"message": "service unavailable"}}, record)
                    return
                if fault == "slow":
                    server._stopping.wait(server.slow_s)
                text = GARBAGE if fault == "garbage" else server.answer(prompt)
                prompt_tokens = len(prompt.split())
                record.usage = {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": len(text.split()),
                    "total_tokens": prompt_tokens + len(text.split()),
                }
                answer = {
                    "id": f"chatcmpl-{time.time_ns()}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", server.model),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": record.usage,
                }
                self._send(200, answer, record)

        return Handler
