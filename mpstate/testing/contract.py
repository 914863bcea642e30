"""The store contract as pytest tests, for anyone writing a backend: ``StoreContract``.

::

    from mpstate.testing.contract import StoreContract

    class TestMyStore(StoreContract):
        @pytest.fixture
        def contract_store(self):
            store = PipelineStateStore(MyBackend(), MyExecutor())  # or a store of your own
            yield store
            store.close()

pytest collects every test of ``StoreContract`` under ``TestMyStore`` (the base class itself is
not collected: its name does not start with ``Test``). Each test names its runs, tenants and
idempotency keys afresh, so ``contract_store`` may be shared or hold other data; it only needs a
lock acquire timeout above 200 ms (the default is 5 s).

What it covers (one test each unless said), the representative subset of mpstate's own suite
(``tests/store``, which runs this class over every backend too):

- create / get: version 1 and run-created as event 1; get of a missing run is None and require
  raises ``RunNotFoundError``; a second create of an id raises ``RunAlreadyExistsError`` and
  changes nothing; ``create_or_get`` returns the existing run unchanged;
- commit: the patch and the events land together with consecutive seqs; ``expected_version``
  is a compare-and-set (the right one succeeds, a stale one raises ``VersionConflictError`` and
  writes neither patch nor events); a status change outside ``ALLOWED_RUN_TRANSITIONS`` raises
  ``InvalidTransitionError``; of 6 threads committing at one version exactly one wins;
- cancel: status cancelled with run-cancelled logged; again: no change; a finished run: refused;
- events: ``append_event`` seqs are consecutive and leave the version alone; ``list_events``
  ``since_seq`` is exclusive and ``limit`` caps the page; ``last_event`` is run-created until
  something is appended, then the newest event, and raises ``RunNotFoundError`` for a missing
  run; nothing is appended after a terminal event;
- list_runs: by ``created_at`` then ``run_id``; ``newest_first`` reverses it; ``limit`` and
  ``offset`` page through every run once; ``status`` follows a status change;
- idempotency keys: a held key raises ``IdempotencyKeyInUseError`` naming the holder;
  ``create_or_get`` returns the holder; keys are per tenant;
- tenant views: a view cannot read, change, cancel or lock another tenant's run; it lists only
  its runs and fills in its tenant on create;
- external jobs: ``find_by_external_job_id`` finds the run that recorded a job;
- lock: each grant gets a new token and a greater fence; a held lock times out another taker
  (``LockTimeoutError``); a write under a stale fence raises ``StaleFenceError``; ``with_lock``
  releases the lock when its function raises.

Not covered here (see ``tests/store``): every field's round trip, input validation, lock expiry
and renewal, ``follow_events``, deliveries and unmatched callbacks, counts, the asyncio API.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mpstate.errors import (
    IdempotencyKeyInUseError,
    InvalidTransitionError,
    LockTimeoutError,
    RunAlreadyExistsError,
    RunNotFoundError,
    StaleFenceError,
    VersionConflictError,
)
from mpstate.events import RunCancelled, RunCompleted, RunCreated, RunStarted, StepStarted
from mpstate.models import PipelineRun, PipelineRunStatus
from mpstate.store import PipelineStateStore

__all__ = ["StoreContract"]

_T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class _Names:
    """Fresh ids for one test: runs, tenants and keys no other test (or data) uses."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:10]

    def __call__(self, name: str) -> str:
        return f"{name}-{self.tag}"


class StoreContract:
    """The contract tests; subclass it as ``Test...`` and define ``contract_store``."""

    @pytest.fixture
    def contract_store(self) -> PipelineStateStore:
        """The store under test: override it in your subclass."""
        raise NotImplementedError("define a contract_store fixture in your StoreContract subclass")

    @pytest.fixture
    def new(self) -> _Names:
        return _Names()

    @staticmethod
    def _run(store: PipelineStateStore, run_id: str, **fields: Any) -> PipelineRun:
        return store.create({"runId": run_id, "pipelineId": "contract", **fields})

    # -- create / get -----------------------------------------------------------------------

    def test_create_stores_version_1_and_logs_run_created_as_event_1(
        self, contract_store: PipelineStateStore, new: _Names
    ) -> None:
        created = self._run(contract_store, new("r"))
        assert created.version == 1
        stored = contract_store.require(new("r"))
        assert (stored.version, stored.status) == (1, PipelineRunStatus.PENDING)
        assert [type(e) for e in stored.events] == [RunCreated]
        assert stored.events[0].seq == 1

    def test_get_of_a_missing_run_is_none_and_require_raises_run_not_found(
        self, contract_store: PipelineStateStore, new: _Names
    ) -> None:
        assert contract_store.get(new("missing")) is None
        with pytest.raises(RunNotFoundError):
            contract_store.require(new("missing"))

    def test_creating_an_existing_run_id_raises_and_changes_nothing(
        self, contract_store: PipelineStateStore, new: _Names
    ) -> None:
        self._run(contract_store, new("r"), tenantId=new("t"))
        before = contract_store.require(new("r"))
        with pytest.raises(RunAlreadyExistsError):
            contract_store.create({"runId": new("r"), "pipelineId": "other"})
        assert contract_store.require(new("r")) == before

    def test_create_or_get_returns_the_existing_run_unchanged(
        self, contract_store: PipelineStateStore, new: _Names
    ) -> None:
        self._run(contract_store, new("r"))
        contract_store.update(new("r"), {"status": "running"})
        run, created = contract_store.create_or_get({"runId": new("r"), "pipelineId": "other"})
        assert (created, run.version, run.pipeline_id) == (False, 2, "contract")

    # -- commit -----------------------------------------------------------------------------

    def test_a_commit_lands_its_patch_and_events_together_with_consecutive_seqs(
        self, contract_store: PipelineStateStore, new: _Names
    ) -> None:
        run_id = new("r")
        self._run(contract_store, run_id)
        result = contract_store.commit(
            run_id,
            {"status": "running"},
            [RunStarted(run_id=run_id), StepStarted(run_id=run_id, step_id="s", attempt=0)],
        )
        assert list(result.seqs) == [2, 3]
        assert (result.run.version, result.run.status) == (2, PipelineRunStatus.RUNNING)
        stored = contract_store.require(run_id)
        assert [e.kind for e in stored.events] == ["run-created", "run-started", "step-started"]

    def test_a_commit_at_the_expected_version_raises_the_version_by_one(
        self, contract_store: PipelineStateStore, new: _Names
    ) -> None:
        run = self._run(contract_store, new("r"))
        committed = contract_store.commit(
            new("r"), {"costUsd": 0.5}, expected_version=run.version
        ).run
        assert (committed.version, committed.cost_usd) == (2, 0.5)

    def test_a_commit_at_a_stale_version_raises_and_writes_neither_patch_nor_events(
        self, contract_store: PipelineStateStore, new: _Names
    ) -> None:
        run_id = new("r")
        self._run(contract_store, run_id)
        contract_store.update(run_id, {"costUsd": 0.1})
        before = contract_store.require(run_id)
        with pytest.raises(VersionConflictError) as caught:
            contract_store.commit(
                run_id, {"status": "running"}, [RunStarted(run_id=run_id)], expected_version=1
            )
        assert (caught.value.expected, caught.value.actual) == (1, 2)
        assert contract_store.require(run_id) == before

    def test_a_status_change_outside_the_transition_table_is_refused(
        self, contract_store: PipelineStateStore, new: _Names
    ) -> None:
        run_id = new("r")
        self._run(contract_store, run_id)
        contract_store.update(run_id, {"status": "completed"})
        before = contract_store.require(run_id)
        with pytest.raises(InvalidTransitionError):
            contract_store.update(run_id, {"status": "running"})
        assert contract_store.require(run_id) == before

    def test_of_concurrent_commits_at_one_version_exactly_one_wins(
        self, contract_store: PipelineStateStore, new: _Names
    ) -> None:
        run_id = new("r")
        self._run(contract_store, run_id)
        workers = 6
        barrier = threading.Barrier(workers)
        outcomes: list[object] = [None] * workers

        def work(i: int) -> None:
            barrier.wait()
            try:
                outcomes[i] = contract_store.update(
                    run_id, {"currentStepIndex": i + 1}, expected_version=1
                )
            except VersionConflictError as exc:
                outcomes[i] = exc

        threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners = [o for o in outcomes if isinstance(o, PipelineRun)]
        assert len(winners) == 1
        assert sum(isinstance(o, VersionConflictError) for o in outcomes) == workers - 1
        stored = contract_store.require(run_id)
        assert (stored.version, stored.current_step_index) == (2, winners[0].current_step_index)

    # -- cancel -----------------------------------------------------------------------------

    def test_cancel_sets_cancelled_and_logs_run_cancelled(
        self, contract_store: PipelineStateStore, new: _Names
    ) -> None:
        run_id = new("r")
        self._run(contract_store, run_id)
        cancelled = contract_store.cancel(run_id, "user asked")
        assert (cancelled.status, cancelled.error, cancelled.version) == (
            PipelineRunStatus.CANCELLED,
            "user asked",
            2,
        )
        last = contract_store.require(run_id).events[-1]
        assert isinstance(last, RunCancelled)
        assert (last.seq, last.reason) == (2, "user asked")

    def test_cancelling_twice_changes_nothing_the_second_time(
        self, contract_store: PipelineStateStore, new: _Names
    ) -> None:
        run_id = new("r")
        self._run(contract_store, run_id)
        contract_store.cancel(run_id, "once")
        before = contract_store.require(run_id)
        again = contract_store.cancel(run_id, "twice")
        assert again.version == before.version
        assert contract_store.require(run_id) == before

    def test_cancelling_a_finished_run_raises_and_changes_nothing(
        self, contract_store: PipelineStateStore, new: _Names
    ) -> None:
        run_id = new("r")
        self._run(contract_store, run_id)
        contract_store.update(run_id, {"status": "completed"})
        before = contract_store.require(run_id)
        with pytest.raises(InvalidTransitionError):
            contract_store.cancel(run_id, "too late")
        assert contract_store.require(run_id) == before

    # -- events -----------------------------------------------------------------------------

    def test_append_event_gives_consecutive_seqs_and_leaves_the_version_alone(
        self, contract_store: PipelineStateStore, new: _Names
    ) -> None:
        run_id = new("r")
        self._run(contract_store, run_id)
        seqs = [
            contract_store.append_event(run_id, StepStarted(run_id=run_id, step_id="s", attempt=n))
            for n in range(3)
        ]
        assert seqs == [2, 3, 4]
        assert contract_store.require(run_id).version == 1

    def test_list_events_since_seq_is_exclusive_and_limit_caps_the_page(
        self, contract_store: PipelineStateStore, new: _Names
    ) -> None:
        run_id = new("r")
        self._run(contract_store, run_id)
        for n in range(5):
            contract_store.append_event(run_id, StepStarted(run_id=run_id, step_id="s", attempt=n))
        assert [e.seq for e in contract_store.list_events(run_id, since_seq=2)] == [3, 4, 5, 6]
        assert [e.seq for e in contract_store.list_events(run_id, since_seq=2, limit=2)] == [3, 4]
        assert contract_store.list_events(run_id, since_seq=6) == []

    def test_last_event_is_run_created_until_an_append_then_the_newest_event(
        self, contract_store: PipelineStateStore, new: _Names
    ) -> None:
        run_id = new("r")
        self._run(contract_store, run_id)
        created = contract_store.last_event(run_id)
        assert isinstance(created, RunCreated)
        assert created.seq == 1
        for n in range(3):
            contract_store.append_event(run_id, StepStarted(run_id=run_id, step_id="s", attempt=n))
        contract_store.commit(run_id, {"status": "running"}, [RunStarted(run_id=run_id)])
        newest = contract_store.last_event(run_id)
        assert isinstance(newest, RunStarted)
        assert newest.seq == 5
        assert newest == contract_store.list_events(run_id)[-1]

    def test_last_event_of_a_missing_run_raises_run_not_found(
        self, contract_store: PipelineStateStore, new: _Names
    ) -> None:
        with pytest.raises(RunNotFoundError):
            contract_store.last_event(new("missing"))

    def test_nothing_is_appended_after_a_terminal_event(
        self, contract_store: PipelineStateStore, new: _Names
    ) -> None:
        run_id = new("r")
        self._run(contract_store, run_id)
        contract_store.commit(
            run_id, {"status": "completed"}, [RunCompleted(run_id=run_id, total_cost_usd=0)]
        )
        before = contract_store.require(run_id)
        with pytest.raises(InvalidTransitionError):
            contract_store.append_event(run_id, StepStarted(run_id=run_id, step_id="s", attempt=0))
        assert contract_store.require(run_id) == before

    # -- list_runs --------------------------------------------------------------------------

    def _dataset(self, store: PipelineStateStore, new: _Names, count: int = 7) -> list[str]:
        """``count`` runs of one fresh tenant, two sharing a created_at; ids in listing order."""
        tenant = new("t")
        made = []
        for index, minute in enumerate([5, 1, 3, 3, 0, 6, 2][:count]):
            run_id = new(f"r{index}")
            created = (_T0 + timedelta(minutes=minute)).isoformat()
            self._run(store, run_id, tenantId=tenant, createdAt=created)
            made.append((minute, run_id))
        return [run_id for _, run_id in sorted(made)]

    def test_list_runs_orders_by_created_at_then_run_id(
        self, contract_store: PipelineStateStore, new: _Names
    ) -> None:
        want = self._dataset(contract_store, new)
        listed = contract_store.list_runs(tenant_id=new("t"))
        assert [r.run_id for r in listed] == want
        assert all(r.events == [] for r in listed)

    def test_newest_first_lists_the_same_runs_in_reverse(
        self, contract_store: PipelineStateStore, new: _Names
    ) -> None:
        want = self._dataset(contract_store, new)
        listed = contract_store.list_runs(tenant_id=new("t"), newest_first=True)
        assert [r.run_id for r in listed] == want[::-1]

    def test_paging_with_limit_and_offset_yields_every_run_once_in_order(
        self, contract_store: PipelineStateStore, new: _Names
    ) -> None:
        want = self._dataset(contract_store, new)
        for size in (1, 3, 7):
            paged: list[str] = []
            for offset in range(0, len(want) + size, size):
                page = contract_store.list_runs(tenant_id=new("t"), limit=size, offset=offset)
                assert len(page) <= size
                paged.extend(r.run_id for r in page)
            assert paged == want, f"page size {size}"

    def test_a_status_filter_follows_a_status_change(
        self, contract_store: PipelineStateStore, new: _Names
    ) -> None:
        want = self._dataset(contract_store, new, count=3)
        contract_store.update(want[1], {"status": "running"})

        def listed(status: str) -> list[str]:
            return [r.run_id for r in contract_store.list_runs(tenant_id=new("t"), status=status)]

        assert listed("pending") == [want[0], want[2]]
        assert listed("running") == [want[1]]
        assert [
            r.run_id
            for r in contract_store.list_runs(tenant_id=new("t"), status=["running", "pending"])
        ] == want

    # -- idempotency keys -------------------------------------------------------------------

    def test_a_held_idempotency_key_raises_naming_the_holder(
        self, contract_store: PipelineStateStore, new: _Names
    ) -> None:
        self._run(contract_store, new("first"), tenantId=new("t"), idempotencyKey=new("k"))
        with pytest.raises(IdempotencyKeyInUseError) as caught:
            self._run(contract_store, new("second"), tenantId=new("t"), idempotencyKey=new("k"))
        assert caught.value.existing_run_id == new("first")
        assert contract_store.get(new("second")) is None

    def test_create_or_get_with_a_held_idempotency_key_returns_the_holder(
        self, contract_store: PipelineStateStore, new: _Names
    ) -> None:
        self._run(contract_store, new("first"), tenantId=new("t"), idempotencyKey=new("k"))
        run, created = contract_store.create_or_get(
            {
                "runId": new("second"),
                "pipelineId": "contract",
                "tenantId": new("t"),
                "idempotencyKey": new("k"),
            }
        )
        assert (run.run_id, created) == (new("first"), False)
        assert contract_store.get(new("second")) is None

    def test_idempotency_keys_are_per_tenant(
        self, contract_store: PipelineStateStore, new: _Names
    ) -> None:
        self._run(contract_store, new("a"), tenantId=new("t1"), idempotencyKey=new("k"))
        self._run(contract_store, new("b"), tenantId=new("t2"), idempotencyKey=new("k"))
        listed = contract_store.list_runs(idempotency_key=new("k"))
        assert sorted(r.run_id for r in listed) == sorted([new("a"), new("b")])

    # -- tenant views -----------------------------------------------------------------------

    def test_a_tenant_view_cannot_read_change_cancel_or_lock_another_tenants_run(
        self, contract_store: PipelineStateStore, new: _Names
    ) -> None:
        self._run(contract_store, new("theirs"), tenantId=new("b"))
        before = contract_store.require(new("theirs"))
        view = contract_store.for_tenant(new("a"))
        assert view.get(new("theirs")) is None
        attempts: list[Callable[[], object]] = [
            lambda: view.require(new("theirs")),
            lambda: view.list_events(new("theirs")),
            lambda: view.last_event(new("theirs")),
            lambda: view.update(new("theirs"), {"costUsd": 9.0}),
            lambda: view.cancel(new("theirs"), "not yours"),
            lambda: view.with_lock(new("theirs"), lambda run: None),
        ]
        for attempt in attempts:
            with pytest.raises(RunNotFoundError):
                attempt()
        assert contract_store.require(new("theirs")) == before

    def test_a_tenant_view_lists_only_its_runs_and_fills_in_its_tenant(
        self, contract_store: PipelineStateStore, new: _Names
    ) -> None:
        view = contract_store.for_tenant(new("a"))
        mine = view.create({"runId": new("mine"), "pipelineId": "contract"})
        self._run(contract_store, new("theirs"), tenantId=new("b"))
        assert mine.tenant_id == new("a")
        assert [r.run_id for r in view.list_runs()] == [new("mine")]
        assert isinstance(view.last_event(new("mine")), RunCreated)

    # -- external jobs ----------------------------------------------------------------------

    def test_find_by_external_job_id_finds_the_run_that_recorded_the_job(
        self, contract_store: PipelineStateStore, new: _Names
    ) -> None:
        self._run(contract_store, new("r"), externalJobIds={"video": new("job")})
        found = contract_store.find_by_external_job_id("video", new("job"))
        assert found is not None and found.run_id == new("r")
        assert contract_store.find_by_external_job_id("video", new("other-job")) is None

    # -- lock -------------------------------------------------------------------------------

    def test_each_lock_grant_gets_a_new_token_and_a_greater_fence(
        self, contract_store: PipelineStateStore, new: _Names
    ) -> None:
        self._run(contract_store, new("r"))
        grants = []
        for _ in range(3):
            with contract_store.lock(new("r")) as held:
                assert held.run.run_id == new("r")
                grants.append((held.fence, held.token))
        fences = [fence for fence, _ in grants]
        assert all(later > earlier for earlier, later in itertools.pairwise(fences))
        assert len({token for _, token in grants}) == 3

    def test_a_held_lock_times_out_another_taker(
        self, contract_store: PipelineStateStore, new: _Names
    ) -> None:
        self._run(contract_store, new("r"))
        taker = pytest.raises(LockTimeoutError)
        with contract_store.lock(new("r")), taker, contract_store.lock(new("r"), timeout_ms=100):
            pass
        with contract_store.lock(new("r"), timeout_ms=0):  # released: granted at once
            pass

    def test_a_write_under_a_stale_fence_is_refused(
        self, contract_store: PipelineStateStore, new: _Names
    ) -> None:
        self._run(contract_store, new("r"))
        with contract_store.lock(new("r")) as first:
            stale = first.fence
        with contract_store.lock(new("r")) as second:
            assert contract_store.update(new("r"), {"costUsd": 1.0}, fence=second.fence)
        with pytest.raises(StaleFenceError):
            contract_store.update(new("r"), {"costUsd": 2.0}, fence=stale)
        assert contract_store.require(new("r")).cost_usd == 1.0

    def test_with_lock_releases_the_lock_when_its_function_raises(
        self, contract_store: PipelineStateStore, new: _Names
    ) -> None:
        self._run(contract_store, new("r"))

        def fail(run: PipelineRun) -> None:
            raise KeyError(run.run_id)

        with pytest.raises(KeyError):
            contract_store.with_lock(new("r"), fail)
        assert contract_store.with_lock(new("r"), lambda run: run.run_id, timeout_ms=0) == new("r")
