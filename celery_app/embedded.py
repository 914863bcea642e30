"""Running the app's parts inside one process: a worker thread and HTTP servers on loopback.

The embedded demo and the tests use these; a deployment runs each part as its own process
(``celery worker``, ``mpstate webhooks serve``, ``python -m celery_app.provider``).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from celery import Celery
from celery.app.trace import setup_worker_optimizations

__all__ = ["bind_loopback", "serving", "url_of", "worker_thread"]

#: Longest wait for a part to start or stop, in seconds.
START_TIMEOUT_S = 15.0


def bind_loopback() -> socket.socket:
    """A listening socket on a free loopback port (its URL is known before the server runs).

    Made with ``IPPROTO_TCP`` given: asyncio sets ``TCP_NODELAY`` only on accepted sockets whose
    protocol says TCP, and without it uvicorn's two writes of a response (head, then body) wait
    out the client's delayed ACK: 40 ms per request on loopback instead of about 1.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"


@contextmanager
def serving(asgi_app: Any, sock: socket.socket) -> Iterator[str]:
    """Serve ``asgi_app`` with uvicorn on ``sock`` in a thread; yields the base URL."""
    server = uvicorn.Server(uvicorn.Config(asgi_app, log_level="warning", lifespan="off"))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True
    )
    thread.start()
    try:
        _wait(lambda: server.started or not thread.is_alive(), "the HTTP server to start")
        if not server.started:
            raise RuntimeError("the HTTP server did not start")
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(START_TIMEOUT_S)
        sock.close()


@contextmanager
def worker_thread(
    app: Celery, *, concurrency: int = 4, queues: list[str] | None = None
) -> Iterator[Any]:
    """A real Celery worker (threads pool) consuming in this process until the block ends."""
    ready = threading.Event()
    hostname = f"embedded@{socket.gethostname()}"
    # The threads pool traces each task on the process's default app, and reports the worker
    # name set up here (``celery worker`` does both at start): make them this app and worker.
    app.set_default()
    setup_worker_optimizations(app, hostname)
    worker = app.WorkController(
        pool_cls="threads",
        concurrency=concurrency,
        hostname=hostname,
        queues=queues or [app.conf.task_default_queue],
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        ready_callback=lambda _consumer: ready.set(),
        loglevel="WARNING",
    )
    thread = threading.Thread(target=worker.start, name="celery-worker", daemon=True)
    thread.start()
    try:
        if not ready.wait(START_TIMEOUT_S):
            raise RuntimeError("the embedded Celery worker did not start")
        yield worker
    finally:
        worker.stop(in_sighandler=False)
        thread.join(START_TIMEOUT_S)


def _wait(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)
