"""Errors survive the trips Celery makes them take: pickling, and ``cls(*error.args)``.

A step's exception reaches the caller through a result backend, which rebuilds it from its type
and ``args``; an error whose ``args`` did not match its constructor was replaced by a stand-in
(``MpStateError`` or Celery's ``UnpickleableExceptionWrapper``), and its fields were lost.
"""

from __future__ import annotations

import pickle

import pytest

from mpstate import errors

SAMPLES: list[errors.MpStateError] = [
    errors.InvalidInputError("bad input"),
    errors.InvalidPipelineError("steps form a cycle: a -> b -> a", step_ids=("a", "b")),
    errors.RunNotFoundError("r1"),
    errors.RunInProgressError("busy", run_id="r1"),
    errors.RunAlreadyExistsError("r1"),
    errors.IdempotencyKeyInUseError("r2", idempotency_key="k", existing_run_id="r1"),
    errors.VersionConflictError("r1", expected=3, actual=4),
    errors.LockTimeoutError("r1", timeout_ms=50),
    errors.StaleFenceError("r1", fence=2, current=3),
    errors.LockLostError("r1"),
    errors.LockNotOwnedError("r1"),
    errors.InvalidTransitionError("run 'r1' is completed", run_id="r1", status="completed"),
    errors.InvalidResumeTokenError("r1", "suspended"),
    errors.BudgetExceededError("r1", spent_usd=5.0, max_usd=5.0, needed_usd=0.5),
    errors.StateStoreUnavailableError("connection refused"),
    errors.WriteNotReplicatedError(2, 1, 100),
    errors.WebhookSignatureError("no signature matches"),
    errors.NotInRunError("image.generate", "await_external()"),
]


def test_every_error_class_has_a_sample() -> None:
    assert {type(error).__name__ for error in SAMPLES} == set(errors.__all__) - {"MpStateError"}


@pytest.mark.parametrize("error", SAMPLES, ids=lambda e: type(e).__name__)
def test_an_error_survives_a_pickle_round_trip_with_its_message_and_fields(
    error: errors.MpStateError,
) -> None:
    copy = pickle.loads(pickle.dumps(error))

    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert vars(copy) == vars(error)


@pytest.mark.parametrize("error", SAMPLES, ids=lambda e: type(e).__name__)
def test_an_error_is_rebuilt_from_its_type_and_args_as_result_backends_do(
    error: errors.MpStateError,
) -> None:
    rebuilt = type(error)(*error.args)

    assert str(rebuilt) == str(error)
    assert vars(rebuilt) == vars(error)


#: Whether retrying the very same call may succeed, per error class (the errors module's tree).
RETRYABLE = {
    "InvalidInputError": False,
    "InvalidPipelineError": False,
    "RunNotFoundError": False,
    "RunInProgressError": True,
    "RunAlreadyExistsError": False,
    "IdempotencyKeyInUseError": False,
    "VersionConflictError": True,
    "LockTimeoutError": True,
    "StaleFenceError": False,
    "LockLostError": False,
    "LockNotOwnedError": False,
    "InvalidTransitionError": False,
    "InvalidResumeTokenError": False,
    "BudgetExceededError": False,
    "StateStoreUnavailableError": True,
    "WriteNotReplicatedError": True,
    "WebhookSignatureError": False,
    "NotInRunError": False,
}


def test_every_error_says_whether_retrying_the_same_call_may_succeed() -> None:
    assert set(RETRYABLE) == set(errors.__all__) - {"MpStateError"}
    for error in SAMPLES:
        assert error.retryable is RETRYABLE[type(error).__name__], type(error).__name__


def test_the_errors_module_docstring_draws_each_errors_retryability() -> None:
    doc = errors.__doc__ or ""
    for name, retryable in RETRYABLE.items():
        row = next(line for line in doc.splitlines() if f"── {name}" in line)
        assert row.rstrip().endswith(" yes" if retryable else " no"), row


def test_a_retryable_flag_survives_a_pickle_round_trip() -> None:
    for error in SAMPLES:
        assert pickle.loads(pickle.dumps(error)).retryable is error.retryable


def test_a_stale_fence_and_a_lock_not_owned_are_both_a_lost_lock() -> None:
    stale = errors.StaleFenceError("r1", fence=2, current=3)
    not_owned = errors.LockNotOwnedError("r1")

    assert isinstance(stale, errors.LockLostError)
    assert isinstance(not_owned, errors.LockLostError)
    assert isinstance(stale, errors.RunInProgressError)  # kept, for callers that caught it so
    assert not isinstance(not_owned, errors.RunInProgressError)
    assert (stale.run_id, stale.fence, stale.current) == ("r1", 2, 3)
    assert (
        str(stale) == "write to run 'r1' carried fence 2, the lock was since granted with fence 3"
    )
