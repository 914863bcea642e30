"""One trace per run, with OpenTelemetry (the ``otel`` extra: ``opentelemetry-api`` only).

A run's trace context is taken when it starts (the caller's current span, else a short root span
``mpstate.run``) and stored on the run (``PipelineRun.trace_context``, W3C ``traceparent``). Every
step attempt then runs in a span ``mpstate.step <step>`` whose parent is in that trace, whichever
worker runs it and however it was published: the next step, a retry, a reconciler's requeue, or a
resume by a webhook or a poll (whose ``mpstate.resolve <provider>`` span is itself a child of the
run's context, so a provider's answer does not start a second trace). The context is also sent in
every step message's ``traceparent`` header, as ``opentelemetry-instrumentation-celery`` sends it,
so that instrumentation's spans join the same trace; when it is active, a step span is a child of
its consumer span.

Spans carry ``mpstate.run_id``, ``mpstate.step_id``, ``mpstate.attempt`` and
``mpstate.pipeline_id`` as attributes. Without ``opentelemetry-api`` installed, or without an SDK
configured (the API's no-op tracer), everything here costs nothing and records nothing: mpstate
never configures the SDK or an exporter; that is the application's choice.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mpstate.models import PipelineRun

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
except ImportError:  # the otel extra is not installed: tracing is off
    trace = None  # type: ignore[assignment]

__all__ = [
    "message_carrier",
    "new_run_context",
    "publishing",
    "resolve_span",
    "step_span",
    "trace_headers",
]

_TRACER_NAME = "mpstate"


def _tracer() -> Any:
    assert trace is not None
    return trace.get_tracer(_TRACER_NAME)


def new_run_context(pipeline_id: str, run_id: str) -> dict[str, str] | None:
    """The trace context a new run records: the current span's, else that of a root span
    ``mpstate.run`` started (and ended) here. None when tracing is off."""
    if trace is None:
        return None
    if not trace.get_current_span().get_span_context().is_valid:
        attributes = {"mpstate.run_id": run_id, "mpstate.pipeline_id": pipeline_id}
        with _tracer().start_as_current_span(f"mpstate.run {pipeline_id}", attributes=attributes):
            return _carrier()
    return _carrier()


def _carrier() -> dict[str, str] | None:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier or None


@contextmanager
def publishing(run: PipelineRun) -> Iterator[dict[str, str]]:
    """Around publishing one of the run's steps: the run's context is current (so an
    instrumentation's producer span, made from the current context, joins the run's trace), and
    the headers to send (``trace_headers``)."""
    if trace is None or not run.trace_context:
        yield {}
        return
    token = otel_context.attach(_parent(run.trace_context))
    try:
        yield trace_headers(run)
    finally:
        otel_context.detach(token)


def trace_headers(run: PipelineRun) -> dict[str, str]:
    """The message headers that carry the run's trace context to the step's worker: the
    publisher's current span when it is in the run's trace (the step that completed, the
    resolve of a callback), so the next step hangs below what published it; else the run's."""
    if trace is None or not run.trace_context:
        return {}
    parent = _parent(run.trace_context)
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=parent)
    return carrier or dict(run.trace_context)


def _parent(carrier: Mapping[str, str]) -> Any:
    """The context a span about a run starts in: the current one if it is already in the run's
    trace (an instrumentation's consumer span), else the run's own (``carrier``)."""
    stored = propagate.extract(dict(carrier))
    wanted = trace.get_current_span(stored).get_span_context()
    current = trace.get_current_span().get_span_context()
    if current.is_valid and (not wanted.is_valid or current.trace_id == wanted.trace_id):
        return otel_context.get_current()
    return stored


@contextmanager
def _span(name: str, carrier: Mapping[str, str], attributes: Mapping[str, Any]) -> Iterator[None]:
    with _tracer().start_as_current_span(name, context=_parent(carrier), attributes=attributes):
        yield


def step_span(carrier: Mapping[str, str], run_id: str, step_id: str, attempt: int) -> Any:
    """A context manager: the span of one step attempt, current while the attempt runs (its
    completion, and the steps it publishes, are inside it). ``carrier``: the trace headers of
    the step's message (``trace_headers``), so no read of the run is needed."""
    if trace is None or not carrier:
        return nullcontext()
    attributes = {"mpstate.run_id": run_id, "mpstate.step_id": step_id, "mpstate.attempt": attempt}
    return _span(f"mpstate.step {step_id}", carrier, attributes)


def resolve_span(run: PipelineRun, step_id: str, provider: str) -> Any:
    """A context manager: the span of applying a provider's answer (webhook or poll) to a step,
    in the run's trace."""
    if trace is None or not run.trace_context:
        return nullcontext()
    attributes = {
        "mpstate.run_id": run.run_id,
        "mpstate.pipeline_id": run.pipeline_id,
        "mpstate.step_id": step_id,
        "mpstate.provider": provider,
    }
    return _span(f"mpstate.resolve {provider}", run.trace_context, attributes)


def message_carrier(request: Any) -> dict[str, str]:
    """The trace headers a Celery request arrived with (``traceparent``, ``tracestate``)."""
    found = {}
    for name in ("traceparent", "tracestate"):
        value = getattr(request, name, None)
        if value is None and isinstance(getattr(request, "headers", None), Mapping):
            value = request.headers.get(name)
        if isinstance(value, str) and value:
            found[name] = value
    return found
