"""The live log over real HTTP: server-sent events while a run is being written, resumed from
Last-Event-ID, and ended after the run's terminal event."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from dashboard_support import CountingStore, Serve, create_run
from redis.asyncio import Redis as AsyncRedis

from mpstate.aio import AsyncRedisPipelineStateStore
from mpstate.dashboard import dashboard_app


def messages(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """SSE messages as {field: value} (comments skipped)."""
    message: dict[str, str] = {}
    for line in lines:
        if not line:
            if message:
                yield message
            message = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            message[name] = value


def write_later(store: CountingStore, run_id: str) -> threading.Thread:
    def write() -> None:
        for attempt in (1, 2):
            time.sleep(0.2)
            store.append_event(
                run_id, {"kind": "step-started", "runId": run_id, "stepId": "a", "attempt": attempt}
            )
        time.sleep(0.2)
        store.cancel(run_id, "enough")

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("feed", ["asyncio-store", "polling"])
def test_the_stream_sends_each_new_event_with_its_seq_until_the_run_ends(
    rstore: CountingStore, serve: Serve, redis_url: str, prefix: str, feed: str
) -> None:
    create_run(rstore, "live-1")  # seqs 1 (run-created) and 2 (run-started)
    # The asyncio client lives on the server's event loop; its connections close with it.
    async_store = None
    if feed == "asyncio-store":
        async_store = AsyncRedisPipelineStateStore(AsyncRedis.from_url(redis_url), prefix)
    base = serve(dashboard_app(rstore, async_store=async_store))
    writer = write_later(rstore, "live-1")
    with httpx.stream("GET", f"{base}/runs/live-1/events/stream?since=1", timeout=10) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        got = list(messages(r.iter_lines()))
    writer.join()
    events = [m for m in got if "id" in m]
    assert [int(m["id"]) for m in events] == [2, 3, 4, 5]
    kinds = [json.loads(m["data"])["kind"] for m in events]
    assert kinds == ["run-started", "step-started", "step-started", "run-cancelled"]
    assert json.loads(events[1]["data"])["seq"] == 3
    assert got[-1]["event"] == "end"


def test_a_reconnect_resumes_after_its_last_event_id_and_a_finished_run_ends_at_once(
    rstore: CountingStore, serve: Serve, http: httpx.Client
) -> None:
    create_run(rstore, "live-2")
    rstore.cancel("live-2", "done")
    base = serve(dashboard_app(rstore))
    started = time.monotonic()
    with httpx.stream(
        "GET", f"{base}/runs/live-2/events/stream", headers={"Last-Event-ID": "2"}, timeout=10
    ) as r:
        got = list(messages(r.iter_lines()))
    assert [m.get("id") for m in got if "id" in m] == ["3"]
    assert got[-1]["event"] == "end"
    assert time.monotonic() - started < 5
    bad = http.get(f"{base}/runs/live-2/events/stream?since=x")
    assert bad.status_code == 400
