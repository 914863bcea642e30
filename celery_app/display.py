"""The demo's live view: one line per step (progress bar, status, attempts, cost) per run.

Each run is followed through the store's live feed (``follow_events``); after each event the run
record is read again, so the table shows the stored truth, and the event adds what the record
does not keep (progress, the latest note). On a terminal the view redraws in place; otherwise
(CI logs, pipes) each event is printed as the line ``mpstate events`` prints, and the tables once
at the end.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from rich.console import Console, Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from mpstate import (
    PipelineEvent,
    PipelineRun,
    PipelineStateStore,
    StepProgress,
)
from mpstate.cli.event_lines import event_details, event_line
from mpstate.graph import dependencies
from mpstate.models import StepStatus

__all__ = ["RunBoard", "note"]

_STATUS_STYLE = {
    "pending": "dim",
    "running": "yellow",
    "suspended": "cyan",
    "waiting": "cyan",
    "held": "magenta",
    "completed": "green",
    "cached": "green",
    "gated": "red",
    "failed": "red",
    "cancelled": "magenta",
}


#: Narrower than this, the "needs" column gives way so the last event keeps some room (at 80
#: columns it would get two cells).
NEEDS_MIN_WIDTH = 100


def note(event: PipelineEvent) -> str:
    """The step's "last event" cell: the kind and what it recorded, as ``mpstate events`` says."""
    return " ".join([event.kind, *event_details(event, with_meta=False)])


@dataclass
class _RunView:
    run: PipelineRun
    pct: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    events: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    error: str | None = None


class RunBoard:
    """Follows runs in threads and renders them as tables."""

    def __init__(self, store: PipelineStateStore, console: Console) -> None:
        self.store = store
        self.console = console
        self.live_lines = not console.is_terminal
        self._views: dict[str, _RunView] = {}
        self._mutex = threading.Lock()
        self._threads: list[threading.Thread] = []

    def follow(self, run: PipelineRun, timeout_s: float) -> None:
        """Start following ``run`` until it ends or ``timeout_s`` passes."""
        with self._mutex:
            self._views[run.run_id] = _RunView(run)
        thread = threading.Thread(
            target=self._follow, args=(run.run_id, timeout_s), name=f"follow-{run.run_id}"
        )
        thread.start()
        self._threads.append(thread)

    def all_done(self) -> bool:
        return all(not thread.is_alive() for thread in self._threads)

    def runs(self) -> list[PipelineRun]:
        with self._mutex:
            return [view.run for view in self._views.values()]

    def _follow(self, run_id: str, timeout_s: float) -> None:
        try:
            for event in self.store.follow_events(run_id, timeout_s=timeout_s):
                run = self.store.require(run_id, include_events=False)
                with self._mutex:
                    view = self._views[run_id]
                    view.run = run
                    view.events += 1
                    step_id = getattr(event, "step_id", None)
                    if step_id is None and run.current_step_index < len(run.steps):
                        step_id = run.steps[run.current_step_index].step_id
                    if isinstance(event, StepProgress):
                        view.pct[event.step_id] = event.pct
                    if step_id is not None:
                        view.notes[step_id] = note(event)
                if self.live_lines:  # the same line `mpstate events` prints
                    self.console.print(Text(f"{run_id[:8]} ") + event_line(event), soft_wrap=True)
        except Exception as exc:  # shown in the view; the demo exits non-zero
            with self._mutex:
                self._views[run_id].error = f"{type(exc).__name__}: {exc}"
        finally:
            with self._mutex:
                self._views[run_id].finished = time.monotonic()

    # -- rendering --------------------------------------------------------------------------

    def render(self) -> RenderableType:
        with self._mutex:
            return Group(*(self._render_run(view) for view in self._views.values()))

    def _render_run(self, view: _RunView) -> RenderableType:
        run = view.run
        with_needs = self.console.width >= NEEDS_MIN_WIDTH
        table = Table(
            # The title wraps at spaces only: the run id stays whole, to copy into `mpstate`.
            title=Text.assemble(
                (f"{run.pipeline_id} ", "bold"),
                (run.run_id, "dim"),
                "  ",
                (run.status.value, _STATUS_STYLE.get(run.status.value, "")),
                (f" ({run.suspend_reason.value})" if run.suspend_reason else "", "cyan"),
            ),
            title_justify="left",
            expand=True,
        )
        # The stored truth never shrinks; the bar and the note give way.
        table.add_column("step", no_wrap=True, min_width=max(len(s.step_id) for s in run.steps))
        if with_needs:
            table.add_column("needs", overflow="fold", min_width=5, max_width=18)
        table.add_column("progress", width=10)
        table.add_column("status", no_wrap=True, min_width=9)
        table.add_column("tries", justify="right", no_wrap=True, min_width=5)
        table.add_column("cost", justify="right", no_wrap=True, min_width=6)
        # The note takes what is left and gives way first.
        table.add_column("last event", no_wrap=True, overflow="ellipsis", ratio=1, min_width=8)
        needs = dependencies(run.steps)
        for step in run.steps:
            done = step.status in (StepStatus.COMPLETED, StepStatus.CACHED)
            pct = 100.0 if done else view.pct.get(step.step_id, 0.0)
            cells: list[RenderableType] = [
                step.step_id,
                *([",".join(needs[step.step_id]) or "-"] if with_needs else []),
                ProgressBar(total=100, completed=pct, width=10),
                Text(step.status.value, style=_STATUS_STYLE.get(step.status.value, "")),
                str(step.attempts),
                f"${step.cost_usd:.3f}",
                view.notes.get(step.step_id, ""),
            ]
            table.add_row(*cells)
        elapsed = (view.finished or time.monotonic()) - view.started
        footer = Text.assemble(
            ("total ", "bold"),
            f"${run.cost_usd:.3f}",
            f"  ·  {view.events} events  ·  version {run.version}  ·  {elapsed:.1f} s",
        )
        if view.error:
            footer.append(f"\n{view.error}", style="red")
        return Group(table, footer, Text(""))
