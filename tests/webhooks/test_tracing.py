"""One trace per run (``mpstate.tracing``), with the OpenTelemetry SDK's in-memory exporter.

A two-step run on a real worker: ``media.generate`` awaits a Replicate job, the job's signed
callback reaches the real receiver over HTTP, and ``media.publish`` runs. Every span mpstate
records (the run's root, each step attempt on the worker, the receiver's resolve) must be in one
trace, children of the run's context, with the run id as an attribute; the publish step's span is
below the resolve span that published it.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from celery_support import Harness, HarnessFactory
from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from provider_support import (
    SUCCESS,
    Endpoint,
    JwksServer,
    Receiver,
    Seen,
    define_media_tasks,
    provider_receiver,
    start_media_run,
    wait_awaiting,
    with_job_id,
)

from mpstate.models import PipelineRunStatus

_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def sdk() -> None:
    """The SDK with the in-memory exporter, as an application would configure it (once per
    process: OpenTelemetry's global provider cannot be replaced)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


@pytest.fixture
def h(make_harness: HarnessFactory) -> Harness:
    return make_harness()


@pytest.fixture
def receiver(
    h: Harness, endpoint: Endpoint, jwks: JwksServer, http: httpx.Client
) -> Iterator[Receiver]:
    yield Receiver(provider_receiver(h, endpoint, jwks), http)
    endpoint.stack.close()


def of_run(finished: tuple[ReadableSpan, ...], run_id: str) -> list[ReadableSpan]:
    return [s for s in finished if (s.attributes or {}).get("mpstate.run_id") == run_id]


def test_a_run_across_a_worker_and_a_webhook_is_one_trace(
    h: Harness, receiver: Receiver, spans: InMemorySpanExporter
) -> None:
    define_media_tasks(h, Seen())
    h.start_worker()
    run = start_media_run(h, "replicate", "job")
    assert run.trace_context is not None and "traceparent" in run.trace_context
    wait_awaiting(h, run.run_id, "replicate", "job-0")

    answer = receiver.post_signed(
        "replicate", with_job_id("replicate", SUCCESS["replicate"], "job-0"), "job-0"
    )

    assert answer.status_code == 202, answer.text
    assert h.wait_terminal(run.run_id).status is PipelineRunStatus.COMPLETED
    finished = of_run(spans.get_finished_spans(), run.run_id)
    names = sorted(s.name for s in finished)
    assert names == [
        "mpstate.resolve replicate",
        "mpstate.run media",
        "mpstate.step generate",
        "mpstate.step publish",
    ]
    by_name = {s.name: s for s in finished}
    root = by_name["mpstate.run media"]
    assert {s.context.trace_id for s in finished} == {root.context.trace_id}
    traceparent = run.trace_context["traceparent"]
    assert f"{root.context.trace_id:032x}" in traceparent
    # Each step attempt and the resolve hang below the run's context, never a new root.
    for name in ("mpstate.step generate", "mpstate.resolve replicate"):
        assert by_name[name].parent is not None
        assert by_name[name].parent.span_id == root.context.span_id
    # The publish step was published by the resolve that completed generate.
    publish = by_name["mpstate.step publish"]
    assert publish.parent is not None
    assert publish.parent.span_id == by_name["mpstate.resolve replicate"].context.span_id
    step = by_name["mpstate.step generate"].attributes or {}
    assert (step["mpstate.step_id"], step["mpstate.attempt"]) == ("generate", 0)


def test_a_run_started_inside_a_span_joins_the_callers_trace(
    h: Harness, spans: InMemorySpanExporter
) -> None:
    @h.app.task(name="plain.step", shared=False)
    def plain_step() -> dict[str, list[str]]:
        return {"artifactIds": ["x"]}

    h.start_worker()
    tracer = trace.get_tracer("the-application")
    with tracer.start_as_current_span("http request") as request_span:
        run = h.mp.start_run("plain", [{"stepId": "only", "operation": "plain.step"}])
    assert h.wait_terminal(run.run_id).status is PipelineRunStatus.COMPLETED

    finished = of_run(spans.get_finished_spans(), run.run_id)
    assert [s.name for s in finished] == ["mpstate.step only"]  # no root of its own
    (step,) = finished
    assert step.context.trace_id == request_span.get_span_context().trace_id
    assert step.parent is not None
    assert step.parent.span_id == request_span.get_span_context().span_id


def test_with_the_celery_instrumentation_every_span_stays_in_the_runs_trace(
    h: Harness, receiver: Receiver, spans: InMemorySpanExporter
) -> None:
    instrumentor = CeleryInstrumentor()
    instrumentor.instrument()
    try:
        define_media_tasks(h, Seen())
        h.start_worker()
        run = start_media_run(h, "replicate", "job")
        wait_awaiting(h, run.run_id, "replicate", "job-0")
        payload = with_job_id("replicate", SUCCESS["replicate"], "job-0")
        assert receiver.post_signed("replicate", payload, "job-0").status_code == 202
        assert h.wait_terminal(run.run_id).status is PipelineRunStatus.COMPLETED
    finally:
        instrumentor.uninstrument()

    finished = spans.get_finished_spans()
    ours = {s.name: s for s in of_run(finished, run.run_id)}
    trace_id = ours["mpstate.run media"].context.trace_id
    consumers = [s for s in finished if s.name.startswith("run/media.")]
    assert sorted(s.name for s in consumers) == ["run/media.generate", "run/media.publish"]
    assert {s.context.trace_id for s in consumers} == {trace_id}
    # A step span is a child of the instrumentation's consumer span of its task.
    by_id = {s.context.span_id: s for s in finished}
    for step in ("generate", "publish"):
        parent = ours[f"mpstate.step {step}"].parent
        assert parent is not None
        assert by_id[parent.span_id].name == f"run/media.{step}"
