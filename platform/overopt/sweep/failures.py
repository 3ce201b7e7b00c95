"""Why a trial failed, in one line, and which trial it was: what the sweep writes to ``errors/`` and
the report's "Failed trials" shows.

    failure_cause(result.error)   # "JudgeUnavailable: LLM judge at http://... unavailable: ..."
    trial_name_of(result.path)    # "alignment_trial_04a0e_00001"

Tune hands a failed trial's error over as Ray's wrappers around the user's exception (RayTaskError,
TuneError, a Ray Data UserCodeException), or as the text of its error file; the cause is the
user's exception inside them.
"""

from __future__ import annotations

import re


def trial_name_of(trial_path: str) -> str:
    """A trial's name (``tune.get_context().get_trial_name()``) from its Tune directory, for a trial that
    failed before reporting a row: Tune names the directory ``<name>_<tag>_<date>``, where the name is
    ``<trainable>_<5 hex>_<5 digits>``. A directory of another shape is returned whole."""
    directory = trial_path.rstrip("/").rsplit("/", 1)[-1]
    match = re.match(r"(.+?_[0-9a-f]{5}_\d{5})(_|$)", directory)
    return match.group(1) if match else directory


def failure_cause(error: BaseException | str) -> str:
    """What went wrong, as "ExceptionName: message" (the message's first line).

    An exception: the innermost exception of its chain not raised by Ray itself, following
    ``RayTaskError.cause`` (the exception the task raised), ``__cause__`` and ``__context__`` (unless
    suppressed by ``raise ... from None``). Where the chain holds only Ray's exceptions (the cause was
    lost on its way between processes: pickling keeps no ``__cause__``), its text, which carries the
    remote traceback, is read instead. A string (an error file's text): the last
    ``module.ExceptionName: message`` line not raised by Ray; a failure inside a Ray Data task (a judge
    outage while scoring) ends in Ray's wrappers and retry hints, which name no cause."""
    if isinstance(error, BaseException):
        cause = _innermost_user_exception(error)
        if cause is not None:
            lines = str(cause).strip().splitlines()
            return f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__
        error = str(error)
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    raised = [line for line in lines if _EXCEPTION_LINE.match(line) and not line.startswith("ray.")]
    if not raised:
        return lines[-1] if lines else "unknown error"
    kind, _, message = raised[-1].partition(": ")
    return f"{kind.rsplit('.', 1)[-1]}: {message}"  # the class name without its module path


# "overopt.evaluate.verdicts.JudgeUnavailable: LLM judge at ..." (a dotted name ending in a class name)
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Z]\w*: ")


def _innermost_user_exception(error: BaseException) -> BaseException | None:
    """The last exception along the chain from ``error`` inwards that Ray did not define, or None."""
    from ray.exceptions import RayTaskError

    found: BaseException | None = None
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if not _defined_by_ray(current):
            found = current
        if isinstance(current, RayTaskError) and current.cause is not None:
            current = current.cause  # what the task raised (also inside as_instanceof_cause()'s dual class)
        else:
            current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return found


def _defined_by_ray(error: BaseException) -> bool:
    # RayTaskError(ValueError), the class as_instanceof_cause() makes, is defined in ray.exceptions.
    module = type(error).__module__ or ""
    return module == "ray" or module.startswith("ray.")
