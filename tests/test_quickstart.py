"""The README's store quick start (examples/quickstart.py) runs as documented, memory and Redis."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis
from key_cleanup import delete_prefix

QUICKSTART = Path(__file__).resolve().parent.parent / "examples" / "quickstart.py"


@pytest.mark.parametrize("on_redis", [False, True], ids=["memory", "redis"])
def test_the_quick_start_behaves_as_the_readme_says(redis_url: str, on_redis: bool) -> None:
    args = ["--redis", redis_url] if on_redis else []
    try:
        done = subprocess.run(
            [sys.executable, str(QUICKSTART), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        if on_redis:
            delete_prefix(redis.Redis.from_url(redis_url), "mpstate-quickstart")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "refused a stale write" in done.stdout
    assert "is completed at version 4" in done.stdout
    assert "quick start finished" in done.stdout
