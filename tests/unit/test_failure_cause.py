"""A failed trial's stop reason is the exception that says why, not the last line of Ray's wrappers."""

from overopt.sweep.run import failure_cause, trial_name_of

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


def test_the_users_exception_is_found_under_rays_wrappers():
    assert failure_cause(JUDGE_OUTAGE) == (
        "JudgeUnavailable: LLM judge at http://127.0.0.1:45889/v1 (model 'm') unavailable: "
        "8 of 32 requests failed; first cause: HTTP 503: service unavailable")


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
