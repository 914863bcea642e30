"""A real Flower beside a product-photo run: from a run to its tasks in Flower, and back.

Flower builds its view from worker events only. Step tasks of ``PipelineTask`` carry
``mpstate_run_id`` and ``mpstate_step_id`` as kwargs, so Flower's API finds a run's tasks with
``search=kwargs:mpstate_run_id=RUN``; ``self.progress`` sends ``task-progress`` events, which
Flower counts in its Prometheus metrics. One Flower process (``celery -A celery_app flower``,
configured from ``MPSTATE_*`` like a deployment) and one run on an in-process worker serve both
tests. Flower handles events asynchronously: everything is polled with a deadline.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis
from celery_support import wait_for as polling_wait_for
from key_cleanup import delete_prefix

pytest.importorskip("flower", reason="Flower is not installed (pip install -e '.[app]')")

from celery_app.application import create_app
from celery_app.embedded import bind_loopback, serving, url_of, worker_thread
from celery_app.pipelines import start_product_photo
from celery_app.provider import ProviderBehaviour, provider_app
from celery_app.settings import Settings
from mpstate import PipelineRun, PipelineStateStore
from mpstate.celery import RUN_ID, STEP_ID, MpState
from mpstate.models import PipelineRunStatus
from mpstate.testing._servers import free_port
from mpstate.webhooks import parse_secrets, webhook_app

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]

#: Longest any single wait may take, in seconds.
DEADLINE = 30.0

#: The product-photo steps and the task each runs.
STEP_TASKS = {
    "generate": "image.generate",
    "voiceover": "audio.voiceover",
    "upscale": "image.upscale",
    "quality": "image.quality_gate",
    "video": "video.generate",
}

#: ``image.upscale`` reports progress five times (20 % ... 100 %).
UPSCALE_PROGRESS_EVENTS = 5


@dataclass
class Flower:
    """A Flower process on loopback, with the basic-auth credentials its API needs."""

    url: str
    auth: tuple[str, str]
    process: subprocess.Popen[bytes]
    log_path: Path

    def get(self, path: str, **params: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", params=params, auth=self.auth, timeout=5.0)

    def run_tasks(self, run_id: str) -> dict[str, dict[str, Any]]:
        """``GET /api/tasks?search=kwargs:mpstate_run_id=RUN``: the run's tasks by task id."""
        response = self.get("/api/tasks", search=f"kwargs:{RUN_ID}={run_id}")
        response.raise_for_status()
        tasks: dict[str, dict[str, Any]] = response.json()
        return tasks

    def progress_events(self, task_name: str) -> float:
        """``flower_events_total{type="task-progress", task=...}`` from ``GET /metrics``."""
        # prometheus_client comes with Flower.
        from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

        response = httpx.get(f"{self.url}/metrics", timeout=5.0)
        response.raise_for_status()
        return sum(
            sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
            if sample.name == "flower_events_total"
            and sample.labels.get("type") == "task-progress"
            and sample.labels.get("task") == task_name
        )

    def log(self) -> str:
        """Flower's output so far (its last lines)."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-40:])


@dataclass
class ObservedRun:
    """A completed product-photo run and the Flower that watched it."""

    flower: Flower
    run: PipelineRun
    store: PipelineStateStore


def wait_for(predicate: Callable[[], T | None], what: str, flower: Flower | None = None) -> T:
    """``celery_support.wait_for`` with Flower's output in the failure, when there is a Flower."""
    try:
        found: T = polling_wait_for(predicate, DEADLINE, what)
    except AssertionError as exc:
        if flower is None:
            raise
        raise AssertionError(f"{exc}\nFlower's output:\n{flower.log()}") from None
    return found


@contextmanager
def flower_process(settings: Settings) -> Iterator[Flower]:
    """``celery -A celery_app flower`` configured by ``MPSTATE_*``; terminated on exit."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLOWER_")}
    env |= {
        "MPSTATE_BROKER_URL": settings.broker_url,
        "MPSTATE_STORE_URL": settings.store_url,
        "MPSTATE_PREFIX": settings.prefix,
        "MPSTATE_QUEUE": settings.queue,
    }
    auth = ("mpstate", uuid.uuid4().hex)
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "celery_app",
        "flower",
        "--address=127.0.0.1",
        f"--port={port}",
        f"--basic-auth={auth[0]}:{auth[1]}",
    ]
    with tempfile.TemporaryDirectory(prefix="mpstate-flower-") as tmp:
        log_path = Path(tmp) / "flower.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        flower = Flower(f"http://127.0.0.1:{port}", auth, process, log_path)
        try:
            wait_for(lambda: _healthy(flower), "Flower's /healthcheck", flower)
            yield flower
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
            print(f"Flower's output:\n{flower.log()}")


def _healthy(flower: Flower) -> bool:
    if flower.process.poll() is not None:
        raise AssertionError(f"Flower exited with {flower.process.returncode}:\n{flower.log()}")
    try:
        return httpx.get(f"{flower.url}/healthcheck", timeout=2.0).text == "OK"
    except httpx.TransportError:
        return False


def wait_until_flower_receives_events(flower: Flower, app: Any) -> None:
    """Send probe ``task-sent`` events until Flower has one: it is then subscribed to events.

    ``/healthcheck`` answers before Flower's event receiver has subscribed, and an event sent
    before that is lost (Redis pub/sub): without this, the run's first events could be missed.
    """
    probe_id = f"flower-probe-{uuid.uuid4().hex}"
    with app.events.default_dispatcher() as dispatcher:

        def seen() -> bool:
            dispatcher.send("task-sent", uuid=probe_id, name="mpstate.test.flower-probe")
            return flower.get(f"/api/task/info/{probe_id}").status_code == 200

        wait_for(seen, "Flower to receive a probe event", flower)


def delete_what_the_run_wrote(redis_url: str, prefix: str, app: Any, queue: str) -> None:
    """The store's and the artifact cache's keys under ``prefix``, and the test's queue."""
    with app.connection_for_write() as conn:
        conn.default_channel.queue_delete(queue)
    client = redis.Redis.from_url(redis_url)
    try:
        delete_prefix(client, prefix)
    finally:
        client.close()


@pytest.fixture(scope="module")
def observed(redis_url: str) -> Iterator[ObservedRun]:
    """Flower, a worker, the provider and the receiver; one product-photo run to completion."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    queue = f"{prefix}-q"
    with ExitStack() as stack:
        provider_sock, receiver_sock = bind_loopback(), bind_loopback()
        settings = Settings.from_env(
            {},
            broker_url=redis_url,
            store_url=redis_url,
            prefix=prefix,
            queue=queue,
            provider_url=url_of(provider_sock),
            receiver_url=url_of(receiver_sock),
            webhook_secrets=f"video={uuid.uuid4().hex}",  # there is no default secret
        )
        app = create_app(settings)
        # BRPOP returns every 0.2 s: the worker stops promptly at teardown.
        app.conf.broker_transport_options = {
            **app.conf.broker_transport_options,
            "polling_interval": 0.2,
        }
        mp = MpState.of(app)
        stack.callback(app.close)
        stack.callback(delete_what_the_run_wrote, redis_url, prefix, app, queue)
        stack.callback(mp.close)

        flower = stack.enter_context(flower_process(settings))
        behaviour = ProviderBehaviour(
            secret=settings.secret_for("video"),
            delay_s=0.2,
            duplicate_rate=0,
            failure_rate=0,
            seed=1,
        )
        stack.enter_context(serving(provider_app(behaviour), provider_sock))
        stack.enter_context(
            serving(webhook_app(app, parse_secrets(settings.webhook_secrets)), receiver_sock)
        )
        stack.enter_context(worker_thread(app, concurrency=2))
        wait_until_flower_receives_events(flower, app)

        started = start_product_photo(mp, "a mug", tenant_id="t")
        run = wait_for(lambda: ended(mp.store, started.run_id), f"run {started.run_id} to end")
        assert run.status is PipelineRunStatus.COMPLETED, run.error
        wait_for(
            lambda: caught_up(flower, run.run_id),
            "Flower to show every step task of the run succeeded",
            flower,
        )
        yield ObservedRun(flower, run, mp.store)


def ended(store: PipelineStateStore, run_id: str) -> PipelineRun | None:
    run = store.require(run_id)
    return run if run.is_terminal else None


def caught_up(flower: Flower, run_id: str) -> bool:
    """Flower has seen as many succeeded tasks for the run as it has steps."""
    tasks = flower.run_tasks(run_id).values()
    return sum(task["state"] == "SUCCESS" for task in tasks) == len(STEP_TASKS)


def kwargs_of(task: dict[str, Any]) -> dict[str, Any]:
    """A task's kwargs as Flower shows them (the repr of a dict), parsed."""
    kwargs: dict[str, Any] = ast.literal_eval(task["kwargs"])
    return kwargs


def test_flower_finds_exactly_a_runs_step_tasks_by_the_run_id_in_their_kwargs(
    observed: ObservedRun,
) -> None:
    flower, run = observed.flower, observed.run
    tasks = flower.run_tasks(run.run_id)

    assert len(tasks) == len(STEP_TASKS)
    assert {task["state"] for task in tasks.values()} == {"SUCCESS"}
    by_step = {kwargs_of(task)[STEP_ID]: (task_id, task) for task_id, task in tasks.items()}
    assert {step: task["name"] for step, (_, task) in by_step.items()} == STEP_TASKS
    for step in run.steps:
        task_id, task = by_step[step.step_id]
        # The round trip: run -> its tasks in Flower -> the task ids the run recorded.
        assert task_id == task["uuid"] == step.task_id
        assert kwargs_of(task)[RUN_ID] == run.run_id
    assert kwargs_of(by_step["upscale"][1]) == {
        "factor": 2,
        RUN_ID: run.run_id,
        STEP_ID: "upscale",
    }


def test_flower_shows_a_step_tasks_info_and_counts_its_progress_events(
    observed: ObservedRun,
) -> None:
    flower, run = observed.flower, observed.run
    upscale_id = run.step("upscale").task_id
    assert upscale_id

    response = flower.get(f"/api/task/info/{upscale_id}")
    assert response.status_code == 200, response.text
    info = response.json()
    assert info["uuid"] == upscale_id
    assert info["name"] == "image.upscale"
    assert info["state"] == "SUCCESS"
    assert kwargs_of(info)[RUN_ID] == run.run_id

    # The state PROGRESS lasts from the first task-progress event to task-succeeded; what stays
    # is Flower's count of the events, per task name.
    wait_for(
        lambda: flower.progress_events("image.upscale") >= UPSCALE_PROGRESS_EVENTS,
        "Flower to count the upscale's five task-progress events",
        flower,
    )
    assert flower.progress_events("image.generate") >= 1


def test_a_task_id_from_flower_leads_back_to_its_run_and_step(observed: ObservedRun) -> None:
    flower, run = observed.flower, observed.run
    tasks = flower.run_tasks(run.run_id)
    assert len(tasks) == len(run.steps)

    for task_id, task in tasks.items():
        ids = kwargs_of(task)
        found = observed.store.require(ids[RUN_ID])
        assert found.run_id == run.run_id
        assert [s.step_id for s in found.steps if s.task_id == task_id] == [ids[STEP_ID]]

    response = flower.get("/api/tasks", search=f"kwargs:{RUN_ID}={uuid.uuid4().hex}")
    assert response.status_code == 200
    assert response.json() == {}
