"""A run's timeline (a Gantt chart) computed from its event log, as geometry for inline SVG.

One row per step. Each attempt is a bar from its step-started to its step-completed,
step-failed or step-waiting; the time a step then waits (for a provider's callback, or for a
person's verdict) is a bar of its own (``bar-waiting``), up to the event that ends the wait. A
bar still open ends at the run's end, or now while the run is live. Branches that run in
parallel show as rows overlapping in time. Pure functions, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mpstate.events import AWAITING_APPROVAL, PipelineEvent, StepGated, StepStarted, StepWaiting
from mpstate.models import PipelineRun, StepStatus

__all__ = ["Bar", "Row", "Timeline", "build_timeline", "format_span"]

LABEL_WIDTH = 170
CHART_WIDTH = 720
ROW_HEIGHT = 24
AXIS_HEIGHT = 22
MIN_BAR_WIDTH = 2.0
TICKS = 5

_FAILED_STATUSES = frozenset({StepStatus.FAILED, StepStatus.GATED, StepStatus.CANCELLED})
_DONE_STATUSES = frozenset({StepStatus.COMPLETED, StepStatus.CACHED})


@dataclass(slots=True)
class Bar:
    """One bar of a row: ``css`` is ``bar-running``, ``bar-waiting``, ``bar-done`` or
    ``bar-failed``."""

    x: float
    width: float
    css: str
    title: str


@dataclass(slots=True)
class Row:
    step_id: str
    status: str
    y: float
    bars: list[Bar] = field(default_factory=list)


@dataclass(slots=True)
class Timeline:
    width: int
    height: int
    label_width: int
    rows: list[Row]
    #: (x, label) of each tick of the time axis.
    ticks: list[tuple[float, str]]


@dataclass(slots=True)
class _Segment:
    start: int
    waiting: bool
    attempt: int
    end: int | None = None
    outcome: str | None = None  # "done" | "failed" | None while unknown


def format_span(ms: float) -> str:
    """A duration as an operator reads it: 850ms, 12.4s, 3m05s, 2h10m."""
    if ms < 1000:
        return f"{int(ms)}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def build_timeline(run: PipelineRun, now_ms: int) -> Timeline:
    """The chart of ``run`` (read with its events); ``now_ms`` ends the bars of a live run."""
    events = sorted(run.events, key=lambda e: e.seq or 0)
    start = min((e.at for e in events), default=now_ms)
    end = _end_ms(run, events, now_ms)
    segments = _segments(events)
    span = max(end - start, 1000)

    def x_of(at: int) -> float:
        return LABEL_WIDTH + (at - start) / span * CHART_WIDTH

    rows = []
    for index, step in enumerate(run.steps):
        row = Row(step.step_id, step.status.value, AXIS_HEIGHT + index * ROW_HEIGHT)
        for segment in segments.get(step.step_id, []):
            stop = segment.end if segment.end is not None else end
            css = _css(segment, step.status)
            x = x_of(segment.start)
            width = max(x_of(stop) - x, MIN_BAR_WIDTH)
            what = "waiting" if segment.waiting else f"attempt {segment.attempt}"
            row.bars.append(
                Bar(x, width, css, f"{step.step_id}: {what}, {format_span(stop - segment.start)}")
            )
        rows.append(row)
    ticks = [
        (x_of(start + span * i // (TICKS - 1)), "+" + format_span(span * i / (TICKS - 1)))
        for i in range(TICKS)
    ]
    ticks[0] = (ticks[0][0], "0")
    return Timeline(
        width=LABEL_WIDTH + CHART_WIDTH + 40,
        height=AXIS_HEIGHT + max(len(rows), 1) * ROW_HEIGHT + 4,
        label_width=LABEL_WIDTH,
        rows=rows,
        ticks=ticks,
    )


def _end_ms(run: PipelineRun, events: list[PipelineEvent], now_ms: int) -> int:
    if run.is_terminal and events:
        return events[-1].at
    return max(now_ms, events[-1].at if events else now_ms)


def _segments(events: list[PipelineEvent]) -> dict[str, list[_Segment]]:
    """Each step's bars, from its events in log order."""
    by_step: dict[str, list[_Segment]] = {}
    for event in events:
        step_id = getattr(event, "step_id", None)
        if step_id is None:
            continue
        segments = by_step.setdefault(step_id, [])
        open_segment = segments[-1] if segments and segments[-1].end is None else None
        attempt = segments[-1].attempt if segments else 0
        kind = event.kind
        if isinstance(event, StepStarted):
            _close(open_segment, event.at)
            segments.append(_Segment(event.at, waiting=False, attempt=event.attempt))
        elif isinstance(event, StepWaiting) or (
            isinstance(event, StepGated) and event.verdict == AWAITING_APPROVAL
        ):
            _close(open_segment, event.at)
            segments.append(_Segment(event.at, waiting=True, attempt=attempt))
        elif kind in ("step-completed", "step-failed"):
            _close(open_segment, event.at)
            outcome = "done" if kind == "step-completed" else "failed"
            for segment in segments:
                if segment.attempt == attempt and segment.outcome is None:
                    segment.outcome = outcome
        elif kind == "step-cached":
            _close(open_segment, event.at)
            segments.append(_Segment(event.at, False, attempt, end=event.at, outcome="done"))
    return by_step


def _close(segment: _Segment | None, at: int) -> None:
    if segment is not None:
        segment.end = at


def _css(segment: _Segment, status: StepStatus) -> str:
    if segment.waiting:
        return "bar-waiting"
    outcome = segment.outcome
    if outcome is None and segment.end is not None:
        # Ended without a verdict of its own (the run ended): the step's status tells.
        if status in _FAILED_STATUSES:
            outcome = "failed"
        elif status in _DONE_STATUSES:
            outcome = "done"
    return {"done": "bar-done", "failed": "bar-failed"}.get(outcome or "", "bar-running")
