"""A failed trial's stop reason is the exception that says why, not the last line of Ray's wrappers:
found in the chain of exception objects Tune hands over, or in the text of a trial's error file."""

from ray.exceptions import RayTaskError, UserCodeException
from ray.tune.error import TuneError

from overopt.evaluate.verdicts import JudgeUnavailable
from overopt.sweep.failures import failure_cause, trial_name_of

# The shape of a real error.txt (a judge outage while Ray Data scored an evaluation, inside a Tune trial).
JUDGE_OUTAGE = """Failure # 1 (occurred at 2026-12-02_22-48-47)
ray::ImplicitFunc.train() (pid=25945, ip=192.0.2.2, repr=alignment_trial)
  File "/x/ray/tune/trainable/trainable.py", line 329, in train
    raise skipped from exception_cause(skipped)
  File "/x/overopt/evaluate/llm_judge.py", line 216, in complete_all
    raise JudgeUnavailable(self._describe(errors[0], len(errors), len(texts))) from None
overopt.evaluate.verdicts.JudgeUnavailable: LLM judge at http://127.0.0.1:45889/v1 (model 'm') unavailable: 8 of 32 requests failed; first cause: HTTP 503: service unavailable

The above exception was the direct cause of the following exception:

ray::MapBatches(_score_batch)() (pid=25655, ip=192.0.2.2)
ray.exceptions.UserCodeException: UDF failed to process a data block.
Failed to apply UDF transform after 1/1 attempts (total backoff 0.0s).
To change retry attempts, configure `ray.data.DataContext.get_current()` if you believe this to be transient.
"""


OUTAGE = "LLM judge at http://127.0.0.1:45889/v1 (model 'm') unavailable: 8 of 32 requests failed"


def _raised(error: BaseException, cause: BaseException | None = None) -> BaseException:
    """``error`` as Python leaves it after ``raise error from cause`` (its __cause__ set)."""
    try:
        raise error from cause
    except BaseException as raised:
        return raised


def _task_error(cause: BaseException, traceback_str: str = "Traceback (most recent call last):\n  ...\n") -> RayTaskError:
    return RayTaskError(function_name="score", traceback_str=traceback_str, cause=cause, proctitle="ray::score", pid=1, ip="127.0.0.1")


def test_the_users_exception_is_found_inside_a_ray_task_error():
    error = _task_error(JudgeUnavailable(OUTAGE))
    assert failure_cause(error) == f"JudgeUnavailable: {OUTAGE}"
    # what ray.get raises: a class deriving from both RayTaskError and the user's exception, defined by Ray
    dual = error.as_instanceof_cause()
    assert isinstance(dual, JudgeUnavailable) and failure_cause(dual) == f"JudgeUnavailable: {OUTAGE}"


def test_the_innermost_user_exception_wins_through_ray_data_and_tune_wrappers():
    # A Ray Data UDF failure: UserCodeException raised from the judge's error, inside the task's
    # RayTaskError, inside Tune's TuneError.
    udf = _raised(UserCodeException("UDF failed to process a data block."), JudgeUnavailable(OUTAGE))
    chain = _raised(TuneError("trial failed"), _task_error(udf).as_instanceof_cause())
    assert failure_cause(chain) == f"JudgeUnavailable: {OUTAGE}"
    # a user's exception re-raised around another: the inner one says what went wrong
    wrapped = _raised(RuntimeError("evaluation at step 40 failed"), _raised(ValueError("bad block\nmore detail")))
    assert failure_cause(_task_error(wrapped)) == "ValueError: bad block"  # its first line


def test_a_context_hidden_by_raise_from_none_is_not_the_cause():
    try:
        try:
            raise ConnectionError("HTTP 503")
        except ConnectionError:
            raise JudgeUnavailable(OUTAGE) from None
    except JudgeUnavailable as error:
        assert failure_cause(error) == f"JudgeUnavailable: {OUTAGE}"
    try:
        try:
            raise KeyError("prompt")
        except KeyError:
            raise ValueError("while formatting")  # noqa: B904  (an implicit context, which the chain walk follows)
    except ValueError as error:
        assert failure_cause(error) == "KeyError: 'prompt'"


def test_a_chain_of_ray_exceptions_only_is_read_as_text():
    # Pickling between processes keeps no __cause__: only the remote traceback's text names the cause.
    text = 'Traceback (most recent call last):\n  File "x.py", line 1\noveropt.evaluate.verdicts.JudgeUnavailable: ' + OUTAGE + "\n"
    error = _task_error(UserCodeException("UDF failed to process a data block."), traceback_str=text)
    assert failure_cause(error) == f"JudgeUnavailable: {OUTAGE}"
    assert failure_cause(TuneError("")) == "unknown error"


def test_the_users_exception_is_found_under_rays_wrappers():
    assert failure_cause(JUDGE_OUTAGE) == (
        "JudgeUnavailable: LLM judge at http://127.0.0.1:45889/v1 (model 'm') unavailable: "
        "8 of 32 requests failed; first cause: HTTP 503: service unavailable"
    )


def test_the_last_of_several_user_exceptions_wins_and_text_without_one_falls_back_to_its_last_line():
    text = "ValueError: first\nTraceback...\noveropt.train.steps.NonFiniteTraining: step 1: loss not finite (loss=nan)\n"
    assert failure_cause(text) == "NonFiniteTraining: step 1: loss not finite (loss=nan)"
    assert failure_cause("ray.exceptions.RayActorError: the actor died\nworker exited\n") == "worker exited"
    assert failure_cause("") == "unknown error"


def test_a_trial_without_rows_is_named_as_tune_names_it_not_by_its_directory():
    path = "/runs/x/tune/alignment_trial_04a0e_00001_1_trial=objective_dpo_beta_1_0_size_tiny_seed_0_2026-12-03_05-40-46"
    assert trial_name_of(path) == "alignment_trial_04a0e_00001"
    assert trial_name_of("s3://bucket/x/tune/alignment_trial_04a0e_00000/") == "alignment_trial_04a0e_00000"
    assert trial_name_of("/runs/x/tune/some_other_directory") == "some_other_directory"
