"""follow_events: replay from a seq, then a live feed that ends with the run's terminal event."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import mpstate.core
from mpstate import (
    InvalidInputError,
    PipelineEvent,
    PipelineStateStore,
    RunCompleted,
    RunNotFoundError,
    RunStarted,
    StepProgress,
)


def make_run(store: PipelineStateStore, run_id: str = "r1", tenant_id: str | None = None) -> None:
    store.create({"runId": run_id, "pipelineId": "p", "tenantId": tenant_id})


class Follower(threading.Thread):
    """Follows a run in a thread and records what it saw and when."""

    def __init__(self, store: PipelineStateStore, run_id: str, **options: Any) -> None:
        super().__init__(daemon=True)
        self.feed = store.follow_events(run_id, **options)
        self.seen: list[tuple[PipelineEvent, float]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for event in self.feed:
                self.seen.append((event, time.monotonic()))
        except BaseException as exc:
            self.error = exc

    def seqs(self) -> list[int]:
        return [event.seq for event, _ in self.seen]


def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_follow_replays_from_since_seq_and_ends_at_the_terminal_event(
    store: PipelineStateStore,
) -> None:
    make_run(store)
    store.append_event("r1", RunStarted(run_id="r1"))
    store.append_event("r1", StepProgress(run_id="r1", step_id="s", pct=50))
    store.append_event("r1", RunCompleted(run_id="r1", total_cost_usd=0))

    assert [e.seq for e in store.follow_events("r1")] == [1, 2, 3, 4]
    assert [e.kind for e in store.follow_events("r1", since_seq=2)] == [
        "step-progress",
        "run-completed",
    ]


def test_a_follower_receives_each_event_as_it_is_appended_and_stops_after_the_last(
    store: PipelineStateStore,
) -> None:
    make_run(store)
    follower = Follower(store, "r1", since_seq=1, timeout_s=30)
    follower.start()
    store.append_event("r1", RunStarted(run_id="r1"))
    for pct in (10, 60, 100):
        wait_until(lambda: len(follower.seen) >= 1)
        store.append_event("r1", StepProgress(run_id="r1", step_id="s", pct=pct))
    store.append_event("r1", RunCompleted(run_id="r1", total_cost_usd=0))

    follower.join(10)
    assert not follower.is_alive() and follower.error is None
    assert follower.seqs() == [2, 3, 4, 5, 6]
    assert follower.seen[-1][0].kind == "run-completed"


def test_the_feed_wakes_on_an_append_instead_of_polling(
    store: PipelineStateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With 5 s waits, only a feed that blocks on the backend can deliver the event quickly;
    # a feed that polled once per wait would take up to 5 s.
    monkeypatch.setattr(mpstate.core, "FOLLOW_WAIT_S", 5.0)
    make_run(store)
    follower = Follower(store, "r1", since_seq=1, timeout_s=30)
    follower.start()
    time.sleep(0.3)  # let the follower start its wait
    appended_at = time.monotonic()
    store.append_event("r1", RunStarted(run_id="r1"))
    wait_until(lambda: follower.seen, timeout=10)

    assert follower.seen[0][1] - appended_at < 2.0
    store.append_event("r1", RunCompleted(run_id="r1", total_cost_usd=0))
    follower.join(10)
    assert follower.seqs() == [2, 3]


def test_a_quiet_follow_ends_at_its_timeout(store: PipelineStateStore) -> None:
    make_run(store)
    started = time.monotonic()
    events = list(store.follow_events("r1", timeout_s=0.3))

    assert [e.kind for e in events] == ["run-created"]
    assert 0.25 <= time.monotonic() - started < 5


def test_following_a_missing_run_raises_run_not_found(store: PipelineStateStore) -> None:
    with pytest.raises(RunNotFoundError):
        next(store.follow_events("nope", timeout_s=1))


def test_a_tenant_view_cannot_follow_another_tenants_run(store: PipelineStateStore) -> None:
    make_run(store, "r1", tenant_id="acme")
    with pytest.raises(RunNotFoundError):
        next(store.for_tenant("globex").follow_events("r1", timeout_s=1))
    assert [e.seq for e in store.for_tenant("acme").follow_events("r1", timeout_s=0)] == [1]


@pytest.mark.parametrize(
    "options",
    [
        {"run_id": ""},
        {"run_id": 7},
        {"run_id": "r1", "since_seq": -1},
        {"run_id": "r1", "since_seq": "1"},
        {"run_id": "r1", "timeout_s": -1},
        {"run_id": "r1", "timeout_s": "soon"},
        {"run_id": "r1", "timeout_s": True},
        {"run_id": "r1", "timeout_s": float("nan")},
        {"run_id": "r1", "timeout_s": float("inf")},
    ],
)
def test_follow_events_refuses_invalid_arguments(
    store: PipelineStateStore, options: dict[str, Any]
) -> None:
    make_run(store)
    with pytest.raises(InvalidInputError):
        next(store.follow_events(**options))
