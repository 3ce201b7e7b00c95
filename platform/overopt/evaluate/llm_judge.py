"""The transport of the ``llm`` judge: chat completions from any OpenAI-compatible endpoint.

    transport = ChatTransport.from_config(judge_config)      # reads the key from config.api_key_env
    answers = transport.complete_all(["prompt 1", "prompt 2"])  # raises JudgeUnavailable on an outage
    transport.usage()   # {"requests": ..., "retries": ..., "failures": ..., ...}
    transport.close()

The endpoint is anything that speaks ``POST {base_url}/chat/completions``: a vLLM server
(``vllm serve MODEL`` -> ``http://HOST:8000/v1``), the OpenAI API, or the stand-in judge server in
evaluate/local_judge.py. Verdict logic lives in evaluate/verdicts.py; this module only moves text.

Retries are the ``openai`` client's own (``max_retries``: exponential backoff with jitter on
connection errors, timeouts, 408/409/429 and 5xx, honouring ``Retry-After``), not a loop written
here. An httpx event hook on the client's HTTP client counts every attempt, retries included, and
the status of every response, so the counts in ``usage()`` are what went over the wire.

The API key is read once, from the environment variable whose *name* the config gives, and handed
to the client; it is never logged, stored in a result or put into an error message.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import openai

from overopt.evaluate.verdicts import JudgeUnavailable, empty_usage

# Sent when the config names no key variable: local servers (vLLM without --api-key) ignore it, and
# the client refuses to start without some key.
PLACEHOLDER_KEY = "not-needed"

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Completion:
    text: str  # the answer ("" when the endpoint returned no content)
    finish_reason: str | None  # "stop", or "length" when max_tokens cut the answer
    prompt_tokens: int
    completion_tokens: int


def read_api_key(api_key_env: str | None) -> str:
    """The key from the environment variable named ``api_key_env``; the placeholder when None.

    Errors name the variable, never a value: a config whose api_key_env holds the key itself (not
    a variable name) is refused without echoing it.
    """
    if api_key_env is None:
        return PLACEHOLDER_KEY
    if not _ENV_NAME.match(api_key_env):
        raise ValueError(
            "judge.api_key_env must be the NAME of an environment variable (letters, digits, _), "
            "not the key itself; put the key in that variable"
        )
    key = os.environ.get(api_key_env)
    if not key:
        raise ValueError(f"judge.api_key_env names the environment variable {api_key_env}, which is not set (or empty)")
    return key


def public_endpoint(base_url: str) -> str:
    """``base_url`` without user info, query or fragment: safe to put into messages and logs."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class ChatTransport:
    """Sends prompts as single user messages, ``max_concurrency`` at a time, and counts the traffic.

    Thread-safe counters; one OpenAI client (and its connection pool) per transport. The client
    lives only in a private attribute: nothing returned from here holds it or the key.
    """

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str,
        timeout_s: float,
        max_retries: int,
        max_tokens: int,
        max_concurrency: int,
    ):
        self.endpoint = public_endpoint(base_url)
        self.model = model
        self.max_retries = max_retries
        self.max_tokens = max_tokens
        self.max_concurrency = max_concurrency
        self._lock = threading.Lock()
        self._counts = empty_usage()
        self._responses = 0  # responses of any status: requests - responses = attempts with none
        self._attempts = threading.local()  # attempts of the call running in this thread
        http_client = openai.DefaultHttpxClient(  # the SDK's defaults (limits, redirects) + our hooks
            event_hooks={"request": [self._on_request], "response": [self._on_response]},
        )
        self._client = openai.OpenAI(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout_s,
            max_retries=max_retries,
            http_client=http_client,
        )

    @classmethod
    def from_config(cls, config: Any) -> ChatTransport:
        """From a ``JudgeConfig`` of type llm (base_url, model, api_key_env, timeout_s, ...)."""
        return cls(
            base_url=config.base_url,
            model=config.model,
            api_key=read_api_key(config.api_key_env),
            timeout_s=config.timeout_s,
            max_retries=config.max_retries,
            max_tokens=config.max_tokens,
            max_concurrency=config.max_concurrency,
        )

    def __repr__(self) -> str:
        return f"ChatTransport(endpoint={self.endpoint!r}, model={self.model!r})"

    # -- counting (httpx event hooks run in the thread that sends the request) --------------------

    def _on_request(self, request) -> None:
        self._attempts.count = getattr(self._attempts, "count", 0) + 1
        with self._lock:
            self._counts["requests"] += 1

    def _on_response(self, response) -> None:
        with self._lock:
            self._responses += 1
            if response.status_code == 429:
                self._counts["rate_limited"] += 1
            elif response.status_code >= 500:
                self._counts["server_errors"] += 1

    def _count(self, key: str, value: int) -> None:
        with self._lock:
            self._counts[key] += value

    def usage(self) -> dict[str, int]:
        """Counts since the transport was built (see verdicts.USAGE_KEYS); ``invalid`` is the judge's."""
        with self._lock:
            counts = dict(self._counts)
            counts["no_response"] = counts["requests"] - self._responses
        return counts

    # -- requests ---------------------------------------------------------------------------------

    def complete(self, text: str) -> Completion:
        """One chat completion (the client retries inside); raises the client's error on failure."""
        self._attempts.count = 0
        try:
            response = self._client.chat.completions.create(
                model=self.model,
                messages=[{"role": "user", "content": text}],
                temperature=0,  # the judge's verdict should be a function of its input
                max_tokens=self.max_tokens,
            )
            choice = response.choices[0]  # a body without choices raises here: a malformed endpoint is a failure
            usage = response.usage
            completion = Completion(
                text=choice.message.content or "",
                finish_reason=choice.finish_reason,
                prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            )
        except Exception:
            self._count("failures", 1)
            raise
        finally:
            self._count("retries", max(0, self._attempts.count - 1))
        self._count("prompt_tokens", completion.prompt_tokens)
        self._count("completion_tokens", completion.completion_tokens)
        return completion

    def complete_all(self, texts: Sequence[str]) -> list[Completion]:
        """Answers for all ``texts`` in order, at most ``max_concurrency`` requests in flight.

        The first call that fails after all its retries stops the rest: queued calls are cancelled,
        calls in flight are allowed to finish (so the counts are complete and no thread outlives
        the call), then ``JudgeUnavailable`` is raised naming the endpoint and the cause.
        """
        if not texts:
            return []
        abort = threading.Event()

        def one(text: str) -> Completion | None:
            if abort.is_set():  # a sibling already failed: do not send more to a dead endpoint
                return None
            try:
                return self.complete(text)
            except Exception:
                abort.set()
                raise

        pool = ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(texts)), thread_name_prefix="llm-judge")
        try:
            futures = [pool.submit(one, text) for text in texts]
            wait(futures, return_when=FIRST_EXCEPTION)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # returns once every call in flight is done
        errors = [error for error in (f.exception() for f in futures if not f.cancelled()) if error is not None]
        if errors:
            raise JudgeUnavailable(self._describe(errors[0], len(errors), len(texts))) from None
        completions = [c for c in (f.result() for f in futures) if c is not None]
        assert len(completions) == len(futures)  # none failed, so none was skipped
        return completions

    def _describe(self, error: BaseException, failed: int, total: int) -> str:
        cause = f"{type(error).__name__}: {error}"
        status = getattr(error, "status_code", None)
        if status is not None:
            cause = f"HTTP {status}: {cause}"
        elif error.__cause__ is not None:  # "Connection error." says little; the transport error says why
            cause = f"{cause} ({type(error.__cause__).__name__}: {error.__cause__})"
        api_key = self._client.api_key
        if api_key and api_key != PLACEHOLDER_KEY:
            cause = cause.replace(api_key, "***")  # some servers echo the key they rejected
        return (
            f"LLM judge at {self.endpoint} (model {self.model!r}) unavailable: {failed} of {total} requests failed "
            f"after up to {self.max_retries} retries each; first cause: {cause}"
        )

    def close(self) -> None:
        self._client.close()

    def __del__(self) -> None:
        # The HTTP client is ours (for the hooks), so the SDK will not close it: judges built per
        # evaluation block and dropped must not leave their connection pools open.
        try:
            self._client.close()
        except Exception:  # noqa: BLE001, S110 -- interpreter shutdown: nothing left to tell
            pass
