"""The llm judge over real HTTP: the package's stand-in judge server on 127.0.0.1 (evaluate/local_judge.py),
answering by rules set here and misbehaving on cue.

Verdicts with the position swap, the client's own retries (429 + Retry-After, 500, timeouts), garbage
answers (invalid, never a loss), outages (JudgeUnavailable, no win rate), usage counts against what
the server recorded, and the API key (from the named variable only, sent as the Bearer token, kept
out of every result). Short timeouts keep the module at a few seconds.
"""

import re
import threading
import time
from collections.abc import Callable

import pytest

from overopt.config import JudgeConfig
from overopt.evaluate.judges import USAGE_KEYS, JudgeUnavailable, LLMJudge, build_judge
from overopt.evaluate.llm_judge import PLACEHOLDER_KEY, read_api_key
from overopt.evaluate.local_judge import GARBAGE, JudgeServer, always, verdict
from overopt.metrics import win_rate

MARKER = "zebra"
KEY_VAR = "OVEROPT_TEST_JUDGE_KEY"


# Any template that lays the two summaries out as the default one does: "Summary A:\n...\n\nSummary B:\n...\n\n".
_SUMMARIES = re.compile(r"Summary A:\n(?P<a>.*?)\n\nSummary B:\n(?P<b>.*?)\n\n", re.DOTALL)


def _summaries(prompt: str) -> tuple[str, str]:
    match = _SUMMARIES.search(prompt)
    if match is None:
        raise ValueError("no 'Summary A' / 'Summary B' sections in the request")
    return match["a"], match["b"]


def prefers(marker: str) -> Callable[[str], str]:
    """Prefers the summary containing ``marker``; neither or both -> "A" (position bias on a tie)."""

    def answer(prompt: str) -> str:
        a, b = _summaries(prompt)
        return verdict("B" if marker in b and marker not in a else "A")

    return answer


def longer(prompt: str) -> str:
    a, b = _summaries(prompt)
    return verdict("B" if len(b) > len(a) else "A")


@pytest.fixture(scope="module")
def server():
    server = JudgeServer(slow_s=2.0).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _fresh_server(server):
    server.reset(always("A"))


@pytest.fixture
def make_judge(server):
    judges = []

    def make(**overrides) -> LLMJudge:
        settings = {
            "type": "llm",
            "model": "scripted-judge",
            "base_url": server.base_url,
            "timeout_s": 0.5,
            "max_retries": 2,
            "max_concurrency": 4,
        }
        judge = build_judge(JudgeConfig(**{**settings, **overrides}))
        judges.append(judge)
        return judge

    yield make
    for judge in judges:
        judge.close()


def judge_pairs(judge, policy, baseline):
    n = len(policy)
    return judge.judge([f"post number {i}" for i in range(n)], policy, [True] * n, baseline, [True] * n)


def served_usage(server) -> dict:
    """What the server's records say the client's usage() should be (slow answers never arrived)."""
    delivered = [r for r in server.records if r.status == 200 and r.fault != "slow"]
    return {
        "requests": len(server.records),
        "rate_limited": sum(r.status == 429 for r in server.records),
        "server_errors": sum(r.status >= 500 for r in server.records),
        "prompt_tokens": sum(r.usage["prompt_tokens"] for r in delivered),
        "completion_tokens": sum(r.usage["completion_tokens"] for r in delivered),
    }


def no_judge_threads_left() -> bool:
    return not any(t.name.startswith("llm-judge") for t in threading.enumerate())


# ------------------------------------------------------------------------------------------------
# verdicts


def test_a_judge_that_always_answers_A_gives_ties(server, make_judge):
    judge = make_judge()
    judgements = judge_pairs(judge, [f"policy {MARKER}", "policy two"], ["baseline one", f"baseline {MARKER}"])
    assert [j.outcome for j in judgements] == [0.5, 0.5]  # position bias exposed by the swap
    assert all(len(j.raw) == 2 and j.raw[0].endswith("Preferred: A") for j in judgements)
    # Both orders were asked: each policy response was sent once as Summary A and once as Summary B.
    sent = [r.body["messages"][0]["content"] for r in server.records]
    assert len(sent) == 4
    assert sum(f"Summary A:\npolicy {MARKER}\n" in text for text in sent) == 1
    assert sum(f"Summary B:\npolicy {MARKER}\n" in text for text in sent) == 1


def test_a_judge_with_a_real_preference_gives_wins_and_losses(server, make_judge):
    server.reset(prefers(MARKER))
    judge = make_judge()
    policy = [f"a {MARKER}", "b", "c", f"d {MARKER}"]
    baseline = ["w", f"x {MARKER}", "y", f"z {MARKER}"]
    judgements = judge_pairs(judge, policy, baseline)
    assert [j.outcome for j in judgements] == [1.0, 0.0, 0.5, 0.5]  # neither/both: falls back on position -> tie
    assert judgements[0].raw == ("Comparison: summary A is better.\nPreferred: A", "Comparison: summary B is better.\nPreferred: B")
    assert win_rate([j.outcome for j in judgements]).rate == pytest.approx(0.5)
    assert judge.usage()["invalid"] == 0 and judge.usage()["requests"] == 8


def test_requests_carry_the_configured_model_template_and_settings(server, make_judge):
    server.reset(longer)
    judge = make_judge(max_tokens=77, template="Q: {prompt}\nSummary A:\n{response_a}\n\nSummary B:\n{response_b}\n\nPick.")
    judgements = judge_pairs(judge, ["a longer policy answer"], ["short"])
    assert judgements[0].outcome == 1.0
    bodies = [r.body for r in server.records]
    assert all(b["model"] == "scripted-judge" and b["temperature"] == 0 and b["max_tokens"] == 77 for b in bodies)
    # One user message each, the template filled in both orders (sent concurrently: any arrival order).
    assert all(len(b["messages"]) == 1 and b["messages"][0]["role"] == "user" for b in bodies)
    assert sorted(b["messages"][0]["content"] for b in bodies) == [
        "Q: post number 0\nSummary A:\na longer policy answer\n\nSummary B:\nshort\n\nPick.",
        "Q: post number 0\nSummary A:\nshort\n\nSummary B:\na longer policy answer\n\nPick.",
    ]


# ------------------------------------------------------------------------------------------------
# retries (the openai client's own) and their accounting


def test_429_is_retried_after_retry_after(server, make_judge):
    server.reset(prefers(MARKER))
    server.inject("rate_limit", 1)
    judge = make_judge(max_concurrency=1)  # one request at a time: the 429 hits the first one
    judgements = judge_pairs(judge, [f"p {MARKER}"], ["b"])
    assert judgements[0].outcome == 1.0
    assert server.statuses() == [429, 200, 200]  # the server saw the first request twice
    gap = server.records[1].arrived - server.records[0].arrived
    assert gap >= 0.9  # Retry-After: 1 honoured (the default backoff would be <= 0.5 s)
    usage = judge.usage()
    assert (usage["requests"], usage["retries"], usage["rate_limited"], usage["failures"]) == (3, 1, 1, 0)
    assert usage.items() >= served_usage(server).items()


def test_500_is_retried(server, make_judge):
    server.inject("server_error", 2)
    judge = make_judge(max_concurrency=1, max_retries=2)
    judgements = judge_pairs(judge, ["p"], ["b"])
    assert judgements[0].outcome == 0.5
    assert server.statuses() == [500, 500, 200, 200]
    usage = judge.usage()
    assert (usage["requests"], usage["retries"], usage["server_errors"], usage["failures"]) == (4, 2, 2, 0)


def test_a_response_slower_than_the_timeout_is_retried(server, make_judge):
    server.inject("slow", 1)
    judge = make_judge(max_concurrency=1)
    started = time.monotonic()
    judgements = judge_pairs(judge, ["p"], ["b"])
    assert time.monotonic() - started < 1.9  # the client gave up at timeout_s, not when the slow answer came
    assert judgements[0].outcome == 0.5
    assert len(server.records) == 3 and server.records[0].fault == "slow"
    usage = judge.usage()
    assert (usage["requests"], usage["retries"], usage["no_response"], usage["failures"]) == (3, 1, 1, 0)
    assert usage.items() >= served_usage(server).items()


def test_always_slow_fails_after_the_retries(server, make_judge):
    server.inject("slow", 2)
    judge = make_judge(max_concurrency=1, max_retries=1)
    with pytest.raises(JudgeUnavailable, match=r"127\.0\.0\.1:\d+/v1.*APITimeoutError"):
        judge_pairs(judge, ["p"], ["b"])
    usage = judge.usage()
    assert (usage["requests"], usage["retries"], usage["no_response"], usage["failures"]) == (2, 1, 2, 1)
    assert len(server.records) == 2  # the other order was never sent: the evaluation had already failed


def test_garbage_answers_are_invalid_counted_and_never_a_loss(server, make_judge):
    server.reset(prefers(MARKER))
    server.inject("garbage", 1)
    judge = make_judge(max_concurrency=1)
    judgements = judge_pairs(judge, ["policy", "policy"], [f"baseline {MARKER}", f"baseline {MARKER}"])
    assert judgements[0].outcome is None  # would have been a loss had the answer been parseable
    assert judgements[0].raw[0] == GARBAGE
    assert judgements[1].outcome == 0.0
    assert judge.usage()["invalid"] == 1
    result = win_rate([j.outcome for j in judgements])
    assert (result.n_valid, result.n_invalid, result.rate) == (1, 1, 0.0)


# ------------------------------------------------------------------------------------------------
# outages: the evaluation fails, it never becomes a win rate


def test_an_outage_raises_judge_unavailable_after_the_requests_in_flight(server, make_judge):
    server.outage(True)
    judge = make_judge(max_concurrency=2, max_retries=1)
    with pytest.raises(JudgeUnavailable, match=r"unavailable: .*HTTP 503"):
        judge_pairs(judge, [f"p{i}" for i in range(6)], [f"b{i}" for i in range(6)])
    assert no_judge_threads_left()  # every request in flight finished before the raise
    usage = judge.usage()
    seen = len(server.records)
    time.sleep(0.3)
    assert len(server.records) == seen  # nothing more is sent after the failure
    assert usage["requests"] == seen < 12  # queued comparisons were cancelled, not sent
    assert usage["failures"] >= 1 and usage["server_errors"] == seen
    assert usage["retries"] == seen - usage["failures"]  # each failed call: 1 attempt + 1 retry


def test_connection_refused_raises_judge_unavailable():
    server = JudgeServer().start()
    base_url = server.base_url
    server.stop()  # the port is closed: every attempt is refused
    judge = build_judge(JudgeConfig(type="llm", model="m", base_url=base_url, timeout_s=0.5, max_retries=1, max_concurrency=1))
    with pytest.raises(JudgeUnavailable, match=r"at http://127\.0\.0\.1:\d+/v1 .*APIConnectionError.*ConnectError"):
        judge.judge(["p"], ["r"], [True], ["b"], [True])
    usage = judge.usage()
    assert (usage["requests"], usage["retries"], usage["failures"], usage["no_response"]) == (2, 1, 1, 2)
    assert server.records == []


def test_usage_counts_match_what_the_server_recorded(server, make_judge):
    server.reset(prefers(MARKER))
    for fault in ("rate_limit", "server_error", "garbage", "slow", "server_error"):
        server.inject(fault, 1)
    judge = make_judge(max_concurrency=4, max_retries=3)
    n = 6
    judgements = judge_pairs(judge, [f"p{i} {MARKER}" if i % 2 else f"p{i}" for i in range(n)], [f"b{i}" for i in range(n)])
    usage = judge.usage()
    assert set(usage) == set(USAGE_KEYS)
    assert usage.items() >= served_usage(server).items()
    assert usage["retries"] == usage["requests"] - 2 * n == 4  # one per fault except the garbage answer
    assert (usage["rate_limited"], usage["server_errors"], usage["no_response"], usage["invalid"], usage["failures"]) == (1, 2, 1, 1, 0)
    assert sum(j.outcome is None for j in judgements) == 1


# ------------------------------------------------------------------------------------------------
# the API key


def test_the_key_comes_from_the_named_variable_and_stays_out_of_every_result(server, make_judge, monkeypatch):
    secret = "sk-test-0123456789-secret"
    monkeypatch.setenv(KEY_VAR, secret)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-openai-default")  # the client's default variables are not used
    monkeypatch.setenv("OPENAI_ADMIN_KEY", "sk-wrong-admin")
    server.reset(prefers(MARKER))
    judge = make_judge(api_key_env=KEY_VAR)
    judgements = judge_pairs(judge, [f"p {MARKER}"], ["b"])
    assert judgements[0].outcome == 1.0
    assert [r.authorization for r in server.records] == [f"Bearer {secret}"] * 2
    headers = " ".join(f"{k}: {v}" for r in server.records for k, v in r.headers.items())
    assert "sk-wrong" not in headers
    server.outage(True)
    with pytest.raises(JudgeUnavailable) as failure:
        judge_pairs(judge, ["p"], ["b"])
    for text in (repr(judge), str(judge), repr(judgements), repr(judge.usage()), str(failure.value), repr(failure.value)):
        assert secret not in text


def test_without_a_key_variable_a_placeholder_is_sent(server, make_judge, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-openai-default")
    judge_pairs(make_judge(api_key_env=None), ["p"], ["b"])
    assert {r.authorization for r in server.records} == {f"Bearer {PLACEHOLDER_KEY}"}


def test_a_missing_variable_or_a_key_in_place_of_its_name_is_refused_without_echoing_it(monkeypatch):
    monkeypatch.delenv(KEY_VAR, raising=False)
    with pytest.raises(ValueError, match=f"environment variable {KEY_VAR}, which is not set"):
        read_api_key(KEY_VAR)
    pasted = "sk-proj-abc123-def456"
    with pytest.raises(ValueError) as failure:
        read_api_key(pasted)
    assert pasted not in str(failure.value) and "NAME of an environment variable" in str(failure.value)
