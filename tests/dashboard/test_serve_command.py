"""``mpstate dashboard serve``: bad options are one line and exit 2; good ones serve."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from dashboard_support import CountingStore, create_run

from mpstate.cli import main
from mpstate.testing._servers import free_port

#: The installed command, next to this interpreter.
MPSTATE = Path(sys.executable).parent / "mpstate"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--token", "short"], "8 characters"),
        (["--token", "long-enough-token", "--basic-auth", "a:b"], "not both"),
        (["--basic-auth", "nopassword"], "USER:PASSWORD"),
        (["--port", "x"], "'--port'"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str], redis_url: str
) -> None:
    code = main(["--redis-url", redis_url, "dashboard", "serve", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and says in err


def test_serve_answers_on_its_port_with_the_stores_runs(
    rstore: CountingStore, redis_url: str, prefix: str
) -> None:
    create_run(rstore, "served-1")
    port = free_port()
    command = [str(MPSTATE), "--redis-url", redis_url, "--prefix", prefix]
    command += ["dashboard", "serve", "--port", str(port), "--log-level", "warning", "--metrics"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                assert time.monotonic() < deadline, "the dashboard did not start"
                time.sleep(0.1)
        assert page.status_code == 200
        assert 'data-run-id="served-1"' in page.text
        assert 'data-read-only="true"' in page.text
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert metrics.status_code == 200
        assert 'mpstate_runs{status="running"} 1.0' in metrics.text
    finally:
        process.terminate()
        process.wait(10)
