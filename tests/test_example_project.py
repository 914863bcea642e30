"""The example project (examples/photo_pipeline) passes its own tests, run as its user runs them:
``pytest`` in its folder, with its own configuration and conftest (mpstate's plugin, an
in-memory store and a real worker thread), in a separate process, so nothing of this suite's
configuration leaks into it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent / "examples" / "photo_pipeline"


def test_the_example_projects_tests_pass() -> None:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PYTEST_", "MPSTATE_TEST_"))
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 passed" in done.stdout, done.stdout
