"""Bad input, generated: every refusal is ``InvalidInputError`` and leaves the store unchanged.

Hypothesis generates ids (empty, over 4,096 characters, lone surrogates, colons, braces, any
unicode, wrong types), JSON-ish patches and events, and wrong or extreme values for
``expected_version``, ``fence``, ``since_seq``, ``limit``, lock timings and run filters. For every
backend:

* a refusal is ``InvalidInputError`` (a ``ValueError``), or ``RunNotFoundError`` for a
  well-formed id of a missing run; never another exception (no ``UnicodeEncodeError``, no
  ``redis.ResponseError``, no pydantic error leaking out);
* after a refusal the run is exactly as before: fields, version and event log;
* what is accepted is stored exactly: a read gives back the validated values;
* the backend accepts and refuses exactly what the in-memory store does (the reference).

Each example runs on a fresh namespace (a new in-memory store, or a new key prefix on Redis), so
examples cannot see each other's runs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mpstate import (
    InMemoryPipelineStateStore,
    InvalidInputError,
    InvalidTransitionError,
    MpStateError,
    PipelineRun,
    PipelineRunStatus,
    PipelineStateStore,
    RedisPipelineStateStore,
    RunNotFoundError,
)
from mpstate.events import parse_event
from mpstate.fields import MAX_ID_LENGTH
from mpstate.patches import RunPatch

pytestmark = pytest.mark.timeout(120)

RUN = "the-run"
CREATED_AT = "2024-05-01T12:00:00.000Z"

PROPERTY = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)

# -- strategies -----------------------------------------------------------------------------------

#: Any character UTF-8 can encode (hypothesis leaves out surrogates by default).
SAFE_CHAR = st.characters(codec="utf-8")
SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
TRICKY = [":", "{", "}", "{x}", "a:b:c", "%", "%3A", "*", "?", "[a]", "\\", " ", "\x00", "\n",
          "é", "日本", "🙂", "\u200f", "mp:run:{x}", "0", "-1", "null", "true"]  # fmt: skip

valid_ids = st.one_of(
    st.text(SAFE_CHAR, min_size=1, max_size=30),
    st.sampled_from(TRICKY),
    st.builds(lambda ch, n: ch * n, SAFE_CHAR, st.integers(MAX_ID_LENGTH - 8, MAX_ID_LENGTH)),
)
with_surrogate = st.builds(
    lambda a, s, b: a + s + b,
    st.text(SAFE_CHAR, max_size=4),
    SURROGATE,
    st.text(SAFE_CHAR, max_size=4),
)
#: Never a valid id anywhere; all hashable (some positions are dict keys).
malformed_ids = st.one_of(
    st.just(""),
    st.builds(lambda ch, n: ch * n, SAFE_CHAR, st.integers(MAX_ID_LENGTH + 1, MAX_ID_LENGTH + 64)),
    with_surrogate,
    st.integers(),
    st.floats(),
    st.booleans(),
    st.binary(max_size=6),
    st.tuples(st.integers()),
)

text = st.one_of(st.text(SAFE_CHAR, max_size=10), with_surrogate)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), text)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
)
statuses = st.sampled_from([status.value for status in PipelineRunStatus]) | text
moments = st.one_of(
    st.datetimes(),
    st.sampled_from(
        ["2024-05-01T12:00:00Z", "2024-05-01T12:00:00.123456+02:00", "0001-01-01T00:00:00Z",
         "9999-12-31T23:59:59Z", "yesterday", ""]
    ),
    st.integers(-(2**40), 2**40),
)  # fmt: skip
costs = st.floats() | st.integers(-2, 2**70)

RUN_FIELDS = sorted(
    {name for name in PipelineRun.model_fields}
    | {info.alias for info in PipelineRun.model_fields.values() if info.alias}
)
targeted_patches = st.fixed_dictionaries(
    {},
    optional={
        "status": statuses,
        "error": st.none() | text,
        "budget": st.none() | st.dictionaries(text, json_values, max_size=3) | json_values,
        "costUsd": costs,
        "currentStepIndex": st.integers(-2, 2**70) | json_values,
        "resumeToken": st.none() | text,
        "resumable": st.booleans() | json_values,
        "startedAt": st.none() | moments,
        "completedAt": st.none() | moments,
        "pipelineDefHash": text,
        "pipelineId": valid_ids | malformed_ids,
        "externalJobIds": st.dictionaries(valid_ids | malformed_ids, valid_ids | text, max_size=2),
        "externalJobId": st.none() | text | st.builds("{}:{}".format, text, text),
        "steps": st.lists(
            st.fixed_dictionaries(
                {"stepId": valid_ids, "operation": valid_ids},
                optional={
                    "inputs": st.dictionaries(text, json_values, max_size=2),
                    "status": statuses,
                    "costUsd": costs,
                    "attempts": st.integers(-1, 3),
                },
            ),
            max_size=2,
        ),
        # identity and store-owned fields: never patchable
        "version": st.integers(),
        "runId": valid_ids,
        "tenant_id": valid_ids,
        "createdAt": moments,
        "events": st.just([]),
    },
)
patches = targeted_patches | st.dictionaries(
    st.sampled_from(RUN_FIELDS) | text, json_values, max_size=3
)

EVENT_KINDS = ["run-created", "run-started", "step-started", "step-progress", "step-cached",
               "step-completed", "step-failed", "step-gated", "step-waiting", "run-suspended",
               "run-resumed", "run-completed", "run-failed", "run-cancelled"]  # fmt: skip
EVENT_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "stepId": valid_ids | malformed_ids,
    "attempt": st.integers(-1, 2**70) | json_values,
    "pct": st.floats() | st.integers(-1, 101),
    "etaMs": st.none() | st.integers(-1, 2**70),
    "message": st.none() | text,
    "costUsdAccrued": st.none() | costs,
    "cacheKey": text,
    "artifactIds": st.lists(text, max_size=2) | json_values,
    "costUsd": costs,
    "code": text,
    "retryable": st.booleans() | json_values,
    "gateType": text,
    "verdict": text,
    "reason": st.sampled_from(["webhook", "budget", "gate"]) | text,
    "resumeToken": text,
    "fromStepId": valid_ids,
    "provider": valid_ids | malformed_ids,
    "jobId": valid_ids | malformed_ids,
    "totalCostUsd": costs,
    "terminalReason": text,
    "pipelineDefHash": text,
    "at": st.integers(-1, 2**70) | json_values,
    "seq": st.none() | st.integers(-1, 10),
    "meta": st.none() | st.dictionaries(text, scalars, max_size=2) | json_values,
}
targeted_events = st.builds(
    lambda kind, run_id, rest: {"kind": kind, "runId": run_id, **rest},
    st.sampled_from(EVENT_KINDS) | text,
    st.sampled_from([RUN, RUN, RUN, "another-run"]) | malformed_ids,
    st.fixed_dictionaries({}, optional=EVENT_FIELDS),
)
events = st.one_of(
    targeted_events,
    targeted_events,
    st.dictionaries(st.sampled_from(sorted(EVENT_FIELDS)) | text, json_values, max_size=4),
    json_values,
)

# -- outcomes and comparisons ---------------------------------------------------------------------


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """("ok", value) or (error class name, None) for an mpstate error; anything else escapes."""
    try:
        return "ok", call()
    except MpStateError as exc:
        return type(exc).__name__, None


def canon(value: Any) -> Any:
    """A comparable form: NaN equals NaN (but not None), tuples are lists."""
    if isinstance(value, float) and math.isnan(value):
        return "<NaN>"
    if isinstance(value, dict):
        return {canon(k): canon(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [canon(v) for v in value]
    if hasattr(value, "model_dump"):
        return canon(value.model_dump())
    return value


@dataclass
class Pair:
    """A store of the backend under test and an in-memory reference, both holding ``RUN``."""

    store: PipelineStateStore
    reference: PipelineStateStore

    def both(self, call: Callable[[PipelineStateStore], Any]) -> tuple[tuple[str, Any], str]:
        """The call's outcome on the store, checked to match the reference's kind of outcome."""
        got = outcome(lambda: call(self.store))
        expected = outcome(lambda: call(self.reference))[0]
        assert got[0] == expected, f"backend: {got[0]}, in-memory reference: {expected}"
        return got, expected

    def snapshot(self) -> Any:
        run = self.store.get(RUN)
        listed = [r.run_id for r in self.store.list_runs()]
        return canon(run.model_dump() if run is not None else None), listed


@pytest.fixture
def fresh(make_store: Callable[..., PipelineStateStore], prefix: str) -> Callable[..., Pair]:
    """``fresh(with_run=True)``: a new, isolated store (and reference) per example.

    Redis-backed stores share the fixture's client, each under its own sub-prefix of the test's
    prefix (so the fixture's clean-up deletes them all).
    """
    numbers = itertools.count()
    base = make_store()
    client = base.client if isinstance(base, RedisPipelineStateStore) else None

    def factory(with_run: bool = True) -> Pair:
        store: PipelineStateStore
        if client is None:
            store = InMemoryPipelineStateStore()
        else:
            store = RedisPipelineStateStore(client, prefix=f"{prefix}:x{next(numbers)}")
        pair = Pair(store, InMemoryPipelineStateStore())
        if with_run:
            for target in (pair.store, pair.reference):
                target.create({"runId": RUN, "pipelineId": "p", "createdAt": CREATED_AT})
        return pair

    return factory


# -- ids ------------------------------------------------------------------------------------------


def _lock(store: PipelineStateStore, run_id: Any) -> None:
    with store.lock(run_id, timeout_ms=100):
        pass


#: name -> (call with the id under test, whether None is a valid value there)
ID_CALLS: dict[str, tuple[Callable[[PipelineStateStore, Any], Any], bool]] = {
    "get": (lambda s, i: s.get(i), False),
    "require": (lambda s, i: s.require(i), False),
    "list_events": (lambda s, i: s.list_events(i), False),
    "last_event": (lambda s, i: s.last_event(i), False),
    "update": (lambda s, i: s.update(i, {"error": "e"}), False),
    "commit": (lambda s, i: s.commit(i, {"error": "e"}), False),
    "cancel": (lambda s, i: s.cancel(i, "why"), False),
    "append_event": (lambda s, i: s.append_event(i, {"kind": "run-started", "runId": i}), False),
    "lock": (_lock, False),
    "with_lock": (lambda s, i: s.with_lock(i, lambda run: run, timeout_ms=100), False),
    "find_by_external_job_id provider": (lambda s, i: s.find_by_external_job_id(i, "j"), False),
    "find_by_external_job_id job": (lambda s, i: s.find_by_external_job_id("p", i), False),
    "for_tenant": (lambda s, i: s.for_tenant(i), False),
    "tenant view get": (lambda s, i: s.for_tenant("t").get(i), False),
    "create runId": (lambda s, i: s.create({"runId": i, "pipelineId": "p"}), False),
    "create pipelineId": (lambda s, i: s.create({"runId": "new", "pipelineId": i}), False),
    "create tenantId": (
        lambda s, i: s.create({"runId": "new", "pipelineId": "p", "tenantId": i}),
        True,
    ),
    "create idempotencyKey": (
        lambda s, i: s.create({"runId": "new", "pipelineId": "p", "idempotencyKey": i}),
        True,
    ),
    "create external job provider": (
        lambda s, i: s.create({"runId": "new", "pipelineId": "p", "externalJobIds": {i: "j"}}),
        False,
    ),
    "create_or_get runId": (lambda s, i: s.create_or_get({"runId": i, "pipelineId": "p"}), False),
    "patch external job id": (lambda s, i: s.update(RUN, {"externalJobIds": {"p": i}}), False),
    "patch step id": (
        lambda s, i: s.update(RUN, {"steps": [{"stepId": i, "operation": "o"}]}),
        False,
    ),
    "event runId": (lambda s, i: s.append_event(RUN, {"kind": "run-started", "runId": i}), False),
    "event stepId": (
        lambda s, i: s.append_event(
            RUN, {"kind": "step-started", "runId": RUN, "stepId": i, "attempt": 0}
        ),
        False,
    ),
    "list_runs tenant_id": (lambda s, i: s.list_runs(tenant_id=i), True),
    "list_runs idempotency_key": (lambda s, i: s.list_runs({"idempotencyKey": i}), True),
}


@settings(PROPERTY, max_examples=100)
@given(name=st.sampled_from(sorted(ID_CALLS)), bad=malformed_ids | st.none())
@example(name="get", bad="\ud800")
@example(name="create runId", bad="x" * (MAX_ID_LENGTH + 1))
def test_malformed_ids_are_refused_as_invalid_input_by_every_method_and_change_nothing(
    fresh: Callable[..., Pair], name: str, bad: Any
) -> None:
    call, none_is_valid = ID_CALLS[name]
    if bad is None and none_is_valid:
        bad = ""
    pair = fresh()
    before = pair.snapshot()

    (kind, _), _ = pair.both(lambda s: call(s, bad))

    assert kind == "InvalidInputError"
    assert pair.snapshot() == before


MISSING_CALLS: dict[str, Callable[[PipelineStateStore, str], Any]] = {
    "require": lambda s, i: s.require(i),
    "list_events": lambda s, i: s.list_events(i),
    "last_event": lambda s, i: s.last_event(i),
    "update": lambda s, i: s.update(i, {"error": "e"}, expected_version=1),
    "commit": lambda s, i: s.commit(i, events=[{"kind": "run-started", "runId": i}]),
    "cancel": lambda s, i: s.cancel(i, "why"),
    "append_event": lambda s, i: s.append_event(i, {"kind": "run-started", "runId": i}),
    "lock": _lock,
    "with_lock": lambda s, i: s.with_lock(i, lambda run: run, timeout_ms=100),
}


@PROPERTY
@given(name=st.sampled_from(sorted(MISSING_CALLS)), run_id=valid_ids.filter(lambda i: i != RUN))
def test_well_formed_ids_of_missing_runs_are_not_found_and_nothing_is_created(
    fresh: Callable[..., Pair], name: str, run_id: str
) -> None:
    pair = fresh()
    before = pair.snapshot()

    (kind, _), _ = pair.both(lambda s: MISSING_CALLS[name](s, run_id))

    assert kind == "RunNotFoundError"
    assert pair.store.get(run_id) is None
    assert pair.store.find_by_external_job_id("p", run_id) is None
    assert pair.snapshot() == before


@PROPERTY
@given(
    run_id=valid_ids,
    pipeline_id=valid_ids,
    tenant_id=valid_ids,
    key=valid_ids,
    provider=valid_ids,
    job_id=valid_ids,
)
@example(run_id="{a}:b", pipeline_id=":", tenant_id="}{", key="*", provider="a:b", job_id="%3A")
@example(
    run_id="\U0001f642" * MAX_ID_LENGTH,
    pipeline_id="p",
    tenant_id="t" * MAX_ID_LENGTH,
    key="k" * MAX_ID_LENGTH,
    provider="\x00",
    job_id="j" * MAX_ID_LENGTH,
)
def test_valid_ids_round_trip_exactly_through_create_get_and_list_runs(
    fresh: Callable[..., Pair],
    run_id: str,
    pipeline_id: str,
    tenant_id: str,
    key: str,
    provider: str,
    job_id: str,
) -> None:
    store = fresh(with_run=False).store
    created = store.create(
        {
            "runId": run_id,
            "pipelineId": pipeline_id,
            "tenantId": tenant_id,
            "idempotencyKey": key,
            "externalJobIds": {provider: job_id},
        }
    )
    document = created.model_dump()
    assert (created.run_id, created.pipeline_id, created.tenant_id) == (
        run_id,
        pipeline_id,
        tenant_id,
    )

    assert store.require(run_id, include_events=False).model_dump() == document
    assert [(e.seq, e.kind, e.run_id) for e in store.require(run_id).events] == [
        (1, "run-created", run_id)
    ]
    for listed in (
        store.list_runs(),
        store.list_runs(tenant_id=tenant_id),
        store.list_runs(idempotency_key=key),
        store.list_runs(status="pending", tenant_id=tenant_id),
        store.for_tenant(tenant_id).list_runs(),
    ):
        assert [run.model_dump() for run in listed] == [document]
    found = store.find_by_external_job_id(provider, job_id)
    assert found is not None and found.model_dump() == document
    assert (
        store.for_tenant(tenant_id).require(run_id, include_events=False).model_dump() == document
    )
    with store.lock(run_id, timeout_ms=1000) as held:
        assert held.run.model_dump() == document
        updated = store.update(run_id, {"error": run_id}, expected_version=1, fence=held.fence)
    assert store.require(run_id, include_events=False).model_dump() == updated.model_dump()
    assert updated.error == run_id


# -- patches and events ---------------------------------------------------------------------------


@settings(PROPERTY, max_examples=80)
@given(patch=patches)
@example(patch={"error": "a\ud800b"})
@example(patch={"budget": {"x": float("nan")}})
@example(patch={"budget": {"x": float("inf")}})
@example(patch={"budget": {"\udc00": 1}})
@example(patch={"budget": {"big": 2**70, "nested": [[], {}, [{}]]}})
@example(patch={"externalJobIds": {"p": "j"}, "externalJobId": "q:k"})
def test_arbitrary_patches_are_stored_exactly_or_refused_as_invalid_input(
    fresh: Callable[..., Pair], patch: dict[Any, Any]
) -> None:
    pair = fresh()
    before = pair.snapshot()
    before_run = pair.store.require(RUN)

    (kind, returned), _ = pair.both(lambda s: s.update(RUN, patch))

    if kind != "ok":
        assert kind == "InvalidInputError"
        assert pair.snapshot() == before
        return
    # What pydantic makes of the patch, before any serialisation: the values the caller meant.
    validated = RunPatch.model_validate(dict(patch))
    expected = {name: getattr(validated, name) for name in validated.model_fields_set}
    stored = pair.store.require(RUN)
    assert stored.version == 2
    assert canon(stored.events) == canon(before_run.events)
    for name, value in expected.items():
        assert canon(getattr(stored, name)) == canon(value), f"{name}: stored differs from written"
    assert canon(returned) == canon(stored.model_copy(update={"events": []}))
    for job_provider, job in stored.external_jobs():
        found = pair.store.find_by_external_job_id(job_provider, job)
        assert found is not None and found.run_id == RUN


@settings(PROPERTY, max_examples=80)
@given(batch=st.lists(events, min_size=1, max_size=3), how=st.sampled_from(["append", "commit"]))
@example(
    batch=[{"kind": "step-progress", "runId": RUN, "stepId": "s", "pct": 1, "message": "\ud800"}],
    how="append",
)
@example(batch=[{"kind": "run-started", "runId": RUN, "meta": {"\udc00": 1}}], how="commit")
@example(batch=[{"kind": "run-started", "runId": RUN, "at": 2**70, "seq": 9}], how="append")
def test_arbitrary_events_are_logged_exactly_or_refused_as_invalid_input(
    fresh: Callable[..., Pair], batch: list[Any], how: str
) -> None:
    pair = fresh()
    before = pair.snapshot()

    def write(store: PipelineStateStore) -> tuple[int, ...]:
        if how == "append":
            return tuple(store.append_event(RUN, event) for event in batch[:1])
        return store.commit(RUN, events=batch).seqs

    (kind, seqs), _ = pair.both(write)

    if kind != "ok":
        assert kind == "InvalidInputError"
        assert pair.snapshot() == before
        return
    written = batch[:1] if how == "append" else batch
    log = pair.store.list_events(RUN)
    assert [event.seq for event in log] == list(range(1, len(written) + 2))
    assert seqs == tuple(range(2, len(written) + 2))
    for event, stored in zip(written, log[1:], strict=True):
        # ``at`` defaults to the time of parsing: compare it only when the event gave one.
        ignored = {"seq"} if "at" in event else {"seq", "at"}
        assert canon(stored.model_dump(exclude=ignored)) == canon(
            parse_event(event).model_dump(exclude=ignored)
        )
    assert pair.store.require(RUN).version == (1 if how == "append" else 2)


def test_a_commit_cannot_log_events_after_its_own_terminal_event(
    fresh: Callable[..., Pair],
) -> None:
    pair = fresh()
    before = pair.snapshot()
    batch = [
        {"kind": "run-completed", "runId": RUN, "totalCostUsd": 1},
        {"kind": "run-started", "runId": RUN},
    ]

    with pytest.raises((InvalidInputError, InvalidTransitionError)):
        pair.store.commit(RUN, {"status": "completed"}, batch)

    assert pair.snapshot() == before


# -- guards, paging, lock timings -----------------------------------------------------------------

not_an_int = st.one_of(
    st.booleans(),
    st.floats(),
    text,
    st.binary(max_size=3),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(text, st.integers(), max_size=1),
)


def _extend(store: PipelineStateStore, ttl: Any) -> None:
    with store.lock(RUN, timeout_ms=100) as held:
        held.extend(ttl)


#: name -> (call with the value under test, the smallest valid int, whether None is valid)
GUARD_CALLS: dict[str, tuple[Callable[[PipelineStateStore, Any], Any], int, bool]] = {
    "update expected_version": (lambda s, v: s.update(RUN, {"error": "e"}, v), 1, True),
    "commit expected_version": (
        lambda s, v: s.commit(RUN, {"error": "e"}, expected_version=v),
        1,
        True,
    ),
    "update fence": (lambda s, v: s.update(RUN, {"error": "e"}, fence=v), 1, True),
    "commit fence": (
        lambda s, v: s.commit(RUN, events=[{"kind": "run-started", "runId": RUN}], fence=v),
        1,
        True,
    ),
    "cancel fence": (lambda s, v: s.cancel(RUN, "why", fence=v), 1, True),
    "append_event fence": (
        lambda s, v: s.append_event(RUN, {"kind": "run-started", "runId": RUN}, fence=v),
        1,
        True,
    ),
    "list_events since_seq": (lambda s, v: s.list_events(RUN, since_seq=v), 0, False),
    "list_events limit": (lambda s, v: s.list_events(RUN, limit=v), 1, True),
    "lock timeout_ms": (lambda s, v: s.lock(RUN, timeout_ms=v).__enter__(), 0, True),
    "with_lock timeout_ms": (lambda s, v: s.with_lock(RUN, lambda run: run, timeout_ms=v), 0, True),
    "extend ttl_ms": (_extend, 1, True),
}


@settings(PROPERTY, max_examples=60)
@given(name=st.sampled_from(sorted(GUARD_CALLS)), data=st.data())
def test_wrong_types_for_versions_fences_paging_and_timeouts_are_refused_as_invalid_input(
    fresh: Callable[..., Pair], name: str, data: st.DataObject
) -> None:
    call, minimum, none_is_valid = GUARD_CALLS[name]
    wrong = not_an_int | st.integers(max_value=minimum - 1)
    if not none_is_valid:
        wrong = wrong | st.none()
    value = data.draw(wrong, label="value")
    pair = fresh()
    before = pair.snapshot()

    (kind, _), _ = pair.both(lambda s: call(s, value))

    assert kind == "InvalidInputError"
    assert pair.snapshot() == before


@PROPERTY
@given(name=st.sampled_from(sorted(GUARD_CALLS)), value=st.integers(2**31, 2**80))
@example(name="extend ttl_ms", value=2**63)
@example(name="list_events limit", value=2**63)
def test_huge_but_well_typed_numbers_behave_as_in_memory_or_are_refused_as_invalid_input(
    fresh: Callable[..., Pair], name: str, value: int
) -> None:
    call, _, _ = GUARD_CALLS[name]
    pair = fresh()

    (kind, result), _ = pair.both(lambda s: call(s, value))

    assert kind in ("ok", "InvalidInputError", "VersionConflictError", "StaleFenceError")
    if kind == "ok" and name == "list_events since_seq":
        assert result == []
    if kind == "ok" and name == "list_events limit":
        assert [event.seq for event in result] == [1]


@pytest.mark.parametrize(
    ("since_seq", "limit"), [(2**64, None), (0, 2**63), (2**70, 2**70)], ids=str
)
def test_list_events_with_paging_past_64_bits_returns_what_in_memory_returns(
    fresh: Callable[..., Pair], since_seq: int, limit: int | None
) -> None:
    pair = fresh()

    (kind, result), _ = pair.both(lambda s: s.list_events(RUN, since_seq=since_seq, limit=limit))

    assert kind in ("ok", "InvalidInputError")
    if kind == "ok":
        assert [event.seq for event in result] == ([1] if since_seq == 0 else [])


filter_fields = st.fixed_dictionaries(
    {},
    optional={
        "status": statuses | st.lists(statuses, max_size=3) | json_values,
        "tenant_id": st.none() | valid_ids | malformed_ids,
        "idempotencyKey": st.none() | valid_ids | malformed_ids,
        "since": st.none() | moments,
        "until": st.none() | moments,
        "limit": st.none() | st.integers(-2, 20_000) | json_values,
        "offset": st.integers(-2, 2**70) | json_values,
    },
)
filters = filter_fields | st.dictionaries(text, json_values, max_size=2)


@settings(PROPERTY, max_examples=60)
@given(fields=filters, as_mapping=st.booleans())
@example(fields={"offset": 2**70, "limit": 1}, as_mapping=False)
@example(fields={"status": [[]]}, as_mapping=False)
@example(fields={"status": [{}]}, as_mapping=True)
@example(fields={"status": []}, as_mapping=True)
@example(
    fields={"since": "2024-05-02T00:00:00Z", "until": "2024-05-01T00:00:00Z"}, as_mapping=False
)
def test_arbitrary_run_filters_select_what_in_memory_selects_or_are_refused_as_invalid_input(
    fresh: Callable[..., Pair], fields: dict[str, Any], as_mapping: bool
) -> None:
    pair = fresh()

    def select(store: PipelineStateStore) -> list[str]:
        listed = store.list_runs(fields) if as_mapping else store.list_runs(**fields)
        return [run.run_id for run in listed]

    (kind, selected), _ = pair.both(select)

    assert kind in ("ok", "InvalidInputError")
    if kind == "ok":
        assert selected == select(pair.reference)


# -- arguments of the wrong shape -----------------------------------------------------------------

MALFORMED_CALLS: dict[str, Callable[[PipelineStateStore], Any]] = {
    "create None": lambda s: s.create(None),  # type: ignore[arg-type]
    "create a list": lambda s: s.create([("runId", "x")]),  # type: ignore[arg-type]
    "create with events": lambda s: s.create(
        {"runId": "x", "pipelineId": "p", "events": [{"kind": "run-started", "runId": "x"}]}
    ),
    "create with an unknown field": lambda s: s.create({"runId": "x", "pipelineId": "p", "z": 1}),
    "create with a negative cost": lambda s: s.create(
        {"runId": "x", "pipelineId": "p", "costUsd": -1}
    ),
    "create with NaN cost": lambda s: s.create(
        {"runId": "x", "pipelineId": "p", "costUsd": float("nan")}
    ),
    "create with NaN in the budget": lambda s: s.create(
        {"runId": "x", "pipelineId": "p", "budget": {"x": float("nan")}}
    ),
    "create with a lone surrogate as a budget key": lambda s: s.create(
        {"runId": "x", "pipelineId": "p", "budget": {"\udc00": 1}}
    ),
    "create with duplicate step ids": lambda s: s.create(
        {"runId": "x", "pipelineId": "p", "steps": [{"stepId": "a", "operation": "o"}] * 2}
    ),
    "create with a surrogate in pipelineDefHash": lambda s: s.create(
        {"runId": "x", "pipelineId": "p", "pipelineDefHash": "\ud800"}
    ),
    "create_or_get an int": lambda s: s.create_or_get(7),  # type: ignore[arg-type]
    "update with an empty patch": lambda s: s.update(RUN, {}),
    "update with a list patch": lambda s: s.update(RUN, [("error", "e")]),  # type: ignore[arg-type]
    "update with a str patch": lambda s: s.update(RUN, "error"),  # type: ignore[arg-type]
    "update of version": lambda s: s.update(RUN, {"version": 9}),
    "update of runId": lambda s: s.update(RUN, {"runId": "other"}),
    "update of tenant_id": lambda s: s.update(RUN, {"tenant_id": "t"}),
    "update of events": lambda s: s.update(RUN, {"events": []}),
    "update with a non-str key": lambda s: s.update(RUN, {1: "e"}),
    "update with an unknown status": lambda s: s.update(RUN, {"status": "paused"}),
    "update with a malformed legacy job id": lambda s: s.update(RUN, {"externalJobId": "nocolon"}),
    "commit with nothing": lambda s: s.commit(RUN),
    "commit with events as a str": lambda s: s.commit(RUN, events="run-started"),  # type: ignore[arg-type]
    "commit with events as a mapping": lambda s: s.commit(
        RUN,
        events={"kind": "run-started", "runId": RUN},  # type: ignore[arg-type]
    ),
    "commit with events as an int": lambda s: s.commit(RUN, events=3),  # type: ignore[arg-type]
    "commit with 101 events": lambda s: s.commit(
        RUN, events=[{"kind": "run-started", "runId": RUN}] * 101
    ),
    "commit with an unknown event kind": lambda s: s.commit(
        RUN, events=[{"kind": "run-exploded", "runId": RUN}]
    ),
    "append_event of None": lambda s: s.append_event(RUN, None),  # type: ignore[arg-type]
    "append_event of another run's event": lambda s: s.append_event(
        RUN, {"kind": "run-started", "runId": "other"}
    ),
    "update with a lone surrogate in error": lambda s: s.update(RUN, {"error": "a\ud800b"}),
    "cancel with a lone surrogate in the reason": lambda s: s.cancel(RUN, "\ud800"),
    "append_event with a lone surrogate in a message": lambda s: s.append_event(
        RUN, {"kind": "step-progress", "runId": RUN, "stepId": "s", "pct": 1, "message": "\ud800"}
    ),
    "append_event with a lone surrogate as a meta key": lambda s: s.append_event(
        RUN, {"kind": "run-started", "runId": RUN, "meta": {"\udc00": 1}}
    ),
    "cancel with a non-str reason": lambda s: s.cancel(RUN, None),  # type: ignore[arg-type]
    "with_lock of a non-callable": lambda s: s.with_lock(RUN, "fn"),  # type: ignore[arg-type]
    "list_runs of a non-mapping filter": lambda s: s.list_runs(3),  # type: ignore[arg-type]
    "list_runs with an unknown field": lambda s: s.list_runs(colour="red"),
    "list_runs with no status": lambda s: s.list_runs(status=[]),
    "list_runs with limit 0": lambda s: s.list_runs(limit=0),
    "list_runs with limit over the page size": lambda s: s.list_runs(limit=10_001),
    "list_runs with since after until": lambda s: s.list_runs(
        since="2024-05-02T00:00:00Z", until="2024-05-01T00:00:00Z"
    ),
    "tenant view of another tenant": lambda s: s.for_tenant("a").for_tenant("b"),
    "tenant view listing another tenant": lambda s: s.for_tenant("a").list_runs(tenant_id="b"),
    "tenant view creating for another tenant": lambda s: s.for_tenant("a").create(
        {"runId": "x", "pipelineId": "p", "tenantId": "b"}
    ),
}


@pytest.mark.parametrize("name", MALFORMED_CALLS)
def test_arguments_of_the_wrong_shape_are_refused_as_invalid_input_and_change_nothing(
    fresh: Callable[..., Pair], name: str
) -> None:
    pair = fresh()
    before = pair.snapshot()

    with pytest.raises(InvalidInputError) as caught:
        MALFORMED_CALLS[name](pair.store)

    assert isinstance(caught.value, ValueError)
    assert pair.snapshot() == before
    assert pair.store.get("x") is None
    with pytest.raises(RunNotFoundError):
        pair.store.require("x")
