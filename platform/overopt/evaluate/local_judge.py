"""A small OpenAI-compatible judge server for CPU machines: a transparent stand-in for an LLM judge.

    python jobs/serve_local_judge.py --port 8765       # then judge: {type: llm, base_url: http://127.0.0.1:8765/v1}

It speaks ``POST /v1/chat/completions`` (and ``GET /v1/models``) on 127.0.0.1, reads the pairwise
prompt the ``llm`` judge sends (the default template: "Post:", "Summary A:", "Summary B:"), and answers
in the template's format (``Comparison: ...`` then ``Preferred: A|B``). Its preference is a plain
rule, not a model: the summary that names more of the post's own words wins, each word not in the
post costs half a word, each repeat a fifth. It exists so that the real HTTP path (client,
retries, position swap, audit) runs end to end without a GPU or an API key; a real judge is a vLLM
server (``vllm serve MODEL``) or a hosted API behind the same URL shape.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECTIONS = re.compile(r"Post:\n(?P<post>.*?)\n\nSummary A:\n(?P<a>.*?)\n\nSummary B:\n(?P<b>.*?)\n\n", re.S)


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


def completion_body(model: str, text: str, prompt_tokens: int) -> dict:
    """An OpenAI chat-completion response carrying ``text``."""
    return {
        "id": f"chatcmpl-{time.time_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(text.split()),
            "total_tokens": prompt_tokens + len(text.split()),
        },
    }


class JudgeServer:
    """``ThreadingHTTPServer`` on 127.0.0.1 answering chat completions with ``answer(prompt_text)``."""

    def __init__(self, answer: Callable[[str], str] = overlap_verdict, port: int = 0, model: str = "local-judge"):
        self.answer, self.model = answer, model
        self.requests: list[dict] = []  # what each request carried (path, whether it had a bearer token)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep stderr quiet; requests are counted instead
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                server.requests.append({"path": self.path, "authorization": self.headers.get("Authorization")})
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                try:
                    request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                    prompt = "\n".join(str(m.get("content", "")) for m in request["messages"])
                except (ValueError, KeyError, TypeError) as error:
                    self._send(400, {"error": {"message": f"bad request: {error}"}})
                    return
                self._send(200, completion_body(request.get("model", server.model), server.answer(prompt), len(prompt.split())))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread: threading.Thread | None = None

    def start(self) -> JudgeServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
