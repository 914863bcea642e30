"""The demo's live table (``RunBoard``) at 80 and 120 columns: the run id in its title is whole on
one line (copyable, as ``mpstate runs show`` takes it), and "needs" gives way before the last
event does."""

from __future__ import annotations

import io
import time
import uuid

import pytest
from rich.console import Console

from celery_app.display import NEEDS_MIN_WIDTH, RunBoard
from celery_app.pipelines import PRODUCT_PHOTO
from mpstate import InMemoryPipelineStateStore, PipelineRun

#: Long enough that the title cannot hold the pipeline, the id and the status on 80 columns.
PIPELINE = "product-photo-launch-campaign-for-the-european-market"


def board_text(run: PipelineRun, store: InMemoryPipelineStateStore, width: int) -> str:
    """The board as printed on a ``width``-column terminal, after following ``run`` briefly."""
    console = Console(width=width, record=True, file=io.StringIO())
    board = RunBoard(store, console)
    board.follow(run, timeout_s=0.1)
    deadline = time.monotonic() + 10
    while not board.all_done() and time.monotonic() < deadline:
        time.sleep(0.02)
    console.print(board.render())
    return console.export_text()


@pytest.fixture
def store() -> InMemoryPipelineStateStore:
    return InMemoryPipelineStateStore()


@pytest.mark.parametrize("pipeline_id", ["product-photo", PIPELINE])
def test_at_80_columns_the_title_keeps_the_run_id_whole_on_one_line(
    store: InMemoryPipelineStateStore, pipeline_id: str
) -> None:
    run = store.create(
        {
            "runId": uuid.uuid4().hex,
            "pipelineId": pipeline_id,
            "tenantId": "acme-corporation-europe-west",
            "steps": [dict(step) for step in PRODUCT_PHOTO],
        }
    )

    text = board_text(run, store, 80)

    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    (title,) = [line for line in lines if run.run_id in line]  # whole, on one line
    assert pipeline_id in text
    # A long pipeline id pushes the run id onto the title's second line, whole.
    assert title.startswith(run.run_id) == (pipeline_id == PIPELINE)


def test_needs_gives_way_below_its_width_so_the_last_event_keeps_room(
    store: InMemoryPipelineStateStore,
) -> None:
    run = store.create(
        {
            "runId": uuid.uuid4().hex,
            "pipelineId": "product-photo",
            "steps": [dict(step) for step in PRODUCT_PHOTO],
        }
    )

    narrow = board_text(run, store, 80)
    wide = board_text(run, store, NEEDS_MIN_WIDTH)

    assert "needs" not in narrow
    assert "run-created" in narrow  # the last event of the first step, not cut to "r…"
    assert "needs" in wide
    assert "quality,voiceover" in wide
