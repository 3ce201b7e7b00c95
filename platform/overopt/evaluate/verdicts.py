"""Pairwise verdict logic of the ``llm`` judge: prompt rendering, strict answer parsing, position swap.

Plain Python, no HTTP (the transport is evaluate/llm_judge.py), so every rule here is unit-tested on
hand cases. The protocol (docs/judges.md):

1. The policy's response and the baseline's are put into the judge template twice: once with the
   policy as "A" (``first``), once with the policy as "B" (``second``).
2. Each answer is parsed strictly: the *last* line of the form ``Preferred: A`` or ``Preferred: B``
   (the letter may be quoted) is the choice; anything else is unparseable.
3. The two choices combine into one outcome for the policy: both orders prefer the policy -> win
   (1); both prefer the baseline -> loss (0); they disagree -> tie (0.5: the judge's preference
   followed the position, not the content). If either answer is unparseable the judgement is
   *invalid* (None): counted and reported, never scored as a loss (docs/judges.md).

Usage:
    first, second = pairwise_prompts(template, prompt, policy_response, baseline_response)
    # ... send both to the judge model, get answer_first, answer_second ...
    verdict = combine(parse_preference(answer_first), parse_preference(answer_second))
    verdict.outcome    # 1.0 / 0.5 / 0.0, or None when invalid
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Choice = Literal["A", "B"]

# Usage counters every judge reports (judges.py): the same keys for every judge type, so that every
# results row has the same judge_* columns. "invalid" counts unparseable *answers* (an invalid
# judgement has one or two of them).
USAGE_KEYS = (
    "requests",  # HTTP attempts, retries included
    "retries",  # attempts after the first of a call (429, 5xx, timeouts, refused connections)
    "failures",  # calls that still failed after all retries (each one fails the evaluation)
    "invalid",  # answers with no parseable "Preferred: A|B" line
    "prompt_tokens",  # as the endpoint reported them in `usage`
    "completion_tokens",
    "rate_limited",  # responses with status 429
    "server_errors",  # responses with status >= 500
    "no_response",  # attempts that got no response at all (timeout, connection refused or reset)
)


class JudgeUnavailable(RuntimeError):
    """The judge could not answer within its retry budget (an outage, a rejected key, a wrong model).

    Raised instead of returning judgements: an evaluation whose judge failed must fail loudly and
    never turn into a win rate. The message names the endpoint and the cause, never the API key.
    """


# One verdict line: "Preferred:" then A or B, optionally in matching quotes, and nothing else.
# Case-sensitive and anchored on purpose: "Preferred: <"A" or "B">" (an echo of the template),
# "Preferred: A or B", "Preferred: both" or a bare "A" are not verdicts.
_VERDICT_LINE = re.compile(r"""^\s*Preferred:\s*(?:"(?P<dq>[AB])"|'(?P<sq>[AB])'|“(?P<cq>[AB])”|(?P<bare>[AB]))\s*$""")

_PLACEHOLDERS = re.compile(r"\{(prompt|response_a|response_b)\}")


def parse_preference(answer: str | None) -> Choice | None:
    """The judge's choice in ``answer``: the last line that is exactly ``Preferred: A|B``; else None.

    The *last* matching line counts because models sometimes restate the format before answering.
    """
    if not answer:
        return None
    choice: Choice | None = None
    for line in answer.splitlines():
        match = _VERDICT_LINE.match(line)
        if match:
            letter = next(letter for letter in match.groupdict().values() if letter)
            choice = "A" if letter == "A" else "B"  # every group of the pattern matches A or B only
    return choice


@dataclass(frozen=True)
class PairVerdict:
    outcome: float | None  # for the policy: 1 win, 0.5 tie, 0 loss; None = invalid
    first: Choice | None  # choice with the policy as A (None = unparseable)
    second: Choice | None  # choice with the policy as B

    @property
    def unparseable(self) -> int:
        """How many of the two answers could not be parsed (0, 1 or 2)."""
        return (self.first is None) + (self.second is None)


def combine(first: Choice | None, second: Choice | None) -> PairVerdict:
    """Outcome for the policy from the choice with the policy as A (``first``) and as B (``second``)."""
    if first is None or second is None:
        return PairVerdict(None, first, second)
    policy_votes = (first == "A") + (second == "B")  # 2: both orders chose the policy; 0: neither did
    return PairVerdict({2: 1.0, 1: 0.5, 0: 0.0}[policy_votes], first, second)


def render(template: str, prompt: str, response_a: str, response_b: str) -> str:
    """Fill ``{prompt}``, ``{response_a}``, ``{response_b}`` in one pass.

    Not ``str.format``: prompts and responses may contain braces (code, LaTeX) or even a literal
    "{response_b}", and a single substitution pass never re-reads inserted text. Other braces in
    the template are left as they are.
    """
    values = {"prompt": prompt, "response_a": response_a, "response_b": response_b}
    return _PLACEHOLDERS.sub(lambda match: values[match.group(1)], template)


def pairwise_prompts(template: str, prompt: str, policy_response: str, baseline_response: str) -> tuple[str, str]:
    """The two judge prompts of one comparison: (policy as A, policy as B)."""
    return (
        render(template, prompt, policy_response, baseline_response),
        render(template, prompt, baseline_response, policy_response),
    )


def empty_usage() -> dict[str, int]:
    return {key: 0 for key in USAGE_KEYS}
