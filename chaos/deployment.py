"""The deployment under test, as subprocesses on loopback, and the faults done to it.

Each service runs the command a deployment runs (``docker-compose.yml``): ``celery -A celery_app
worker`` with the prefork pool, ``mpstate webhooks serve --app celery_app`` and
``python -m celery_app.provider``, configured only by ``MPSTATE_*`` environment variables. Redis
keeps an append-only file fsynced on every write, so a SIGKILL loses no acknowledged write.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import httpx
import psutil

from celery_app.settings import Settings
from chaos.config import ChaosConfig
from mpstate.testing import RedisServer
from mpstate.testing._servers import free_port

__all__ = ["Deployment", "Service"]

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SECRET = "video=chaos-secret"
#: Seconds a service may take to become ready.
READY_TIMEOUT_S = 30.0


@dataclass
class Service:
    """One subprocess in its own process group, its output in a log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log: TextIO | None = None

    def start(self) -> Service:
        self._log = self.log_path.open("a")
        self.process = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: a whole-worker kill takes its children too
        )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self, last: int = 4000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-last:]

    def kill_group(self) -> None:
        """SIGKILL the service and every process of its group, as a lost host would."""
        if self.process is not None:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self, grace_s: float = 3.0) -> None:
        """SIGTERM, then SIGKILL the group after ``grace_s``."""
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(grace_s)
        self.kill_group()


@dataclass
class Deployment:
    """Redis, the provider, the receiver and the workers of one chaos run."""

    config: ChaosConfig
    workdir: Path
    redis: RedisServer | None = None
    provider: Service | None = None
    receiver: Service | None = None
    workers: list[Service] = field(default_factory=list)
    child_kills: int = 0
    worker_kills: int = 0
    redis_restarts: int = 0
    _worker_serial: int = 0
    _ports: dict[str, int] = field(default_factory=dict)

    # -- settings ---------------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        """What every service (and the driver) is told."""
        assert self.redis is not None
        return Settings(
            broker_url=f"redis://127.0.0.1:{self.redis.port}/0",
            store_url=f"redis://127.0.0.1:{self.redis.port}/1",
            prefix="chaos",
            tenant_id="chaos",
            queue="chaos",
            visibility_timeout_s=self.config.visibility_timeout_s,
            provider_url=f"http://127.0.0.1:{self._ports['provider']}",
            receiver_url=f"http://127.0.0.1:{self._ports['receiver']}",
            webhook_secrets=SECRET,
        )

    def _environment(self) -> dict[str, str]:
        settings = self.settings
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("MPSTATE_", "PROVIDER_", "CELERY_"))
        }
        env |= {
            "MPSTATE_BROKER_URL": settings.broker_url,
            "MPSTATE_STORE_URL": settings.store_url,
            "MPSTATE_PREFIX": settings.prefix,
            "MPSTATE_TENANT": settings.tenant_id,
            "MPSTATE_QUEUE": settings.queue,
            "MPSTATE_VISIBILITY_TIMEOUT": str(settings.visibility_timeout_s),
            "MPSTATE_PROVIDER_URL": settings.provider_url,
            "MPSTATE_RECEIVER_URL": settings.receiver_url,
            "MPSTATE_WEBHOOK_SECRETS": settings.webhook_secrets,
            "MPSTATE_POLL_PROVIDER": "1" if self.config.poll_provider else "",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
        }
        return env

    # -- starting and stopping --------------------------------------------------------------

    def start(self) -> Deployment:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(
            appendonly=True,
            extra_args=("--appendfsync", "always", "--maxmemory-policy", "noeviction"),
        ).start()
        self._ports = {"provider": free_port(), "receiver": free_port()}
        config = self.config
        self.provider = self._service(
            "provider",
            [
                sys.executable, "-m", "celery_app.provider",
                "--port", str(self._ports["provider"]),
                "--delay", str(config.provider_delay_s),
                "--delay-jitter", str(config.provider_delay_jitter_s),
                "--failure-rate", str(config.provider_failure_rate),
                "--duplicate-rate", str(config.provider_duplicate_rate),
                "--early-rate", str(config.provider_early_rate),
                "--late-duplicate-rate", str(config.provider_late_duplicate_rate),
                "--callback-rate", str(1 - config.provider_lost_callback_rate),
                "--seed", str(config.seed),
            ],
        ).start()  # fmt: skip
        self.receiver = self._service(
            "receiver",
            [
                str(BIN / "mpstate"), "webhooks", "serve", "--app", "celery_app",
                "--port", str(self._ports["receiver"]), "--log-level", "warning",
            ],
        ).start()  # fmt: skip
        for _ in range(config.workers):
            self.workers.append(self._start_worker())
        self._wait_ready()
        return self

    def _service(self, name: str, argv: list[str]) -> Service:
        return Service(name, argv, self._environment(), self.workdir / f"{name}.log")

    def _start_worker(self) -> Service:
        self._worker_serial += 1
        name = f"worker{self._worker_serial}"
        return self._service(
            name,
            [
                str(BIN / "celery"), "-A", "celery_app", "worker", "--pool=prefork",
                f"--concurrency={self.config.concurrency}", "--queues=chaos",
                f"--hostname={name}@{socket.gethostname()}", "--loglevel=INFO",
                "--without-gossip", "--without-mingle",
            ],
        ).start()  # fmt: skip

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        pending = [self.provider, self.receiver, *self.workers]
        while pending:
            if time.monotonic() > deadline:
                names = ", ".join(s.name for s in pending if s is not None)
                raise TimeoutError(f"not ready after {READY_TIMEOUT_S} s: {names}")
            pending = [s for s in pending if s is not None and not self._ready(s)]
            time.sleep(0.1)

    def _ready(self, service: Service) -> bool:
        if not service.alive():
            raise RuntimeError(f"{service.name} exited:\n{service.output()}")
        if service.name.startswith("worker"):
            return " ready." in service.output(last=20_000)
        port = self._ports[service.name]
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        for service in [*self.workers, self.receiver, self.provider]:
            if service is not None:
                service.stop()
        if self.redis is not None:
            self.redis.cleanup()

    # -- faults -----------------------------------------------------------------------------

    def kill_something(self, rng: random.Random) -> str:
        """SIGKILL a random worker's pool child, or (``whole_worker_share``) a whole worker and
        start a replacement; returns what was killed."""
        live = [w for w in self.workers if w.alive()]
        if not live:
            return "nothing alive"
        worker = rng.choice(live)
        children = _children(worker.pid)
        if children and rng.random() >= self.config.whole_worker_share:
            victim = rng.choice(children)
            with suppress(psutil.NoSuchProcess):
                victim.kill()
            self.child_kills += 1
            return f"{worker.name} child {victim.pid}"
        worker.kill_group()
        self.workers.remove(worker)
        self.worker_kills += 1
        replacement = self._start_worker()
        self.workers.append(replacement)
        return f"{worker.name} (whole worker; {replacement.name} started)"

    def restart_redis(self) -> None:
        """SIGKILL Redis, keep it down ``redis_down_s``, start it again from its AOF."""
        assert self.redis is not None
        self.redis.stop()
        time.sleep(self.config.redis_down_s)
        self.redis.start()
        self.redis_restarts += 1

    def provider_stats(self) -> dict[str, int]:
        response = httpx.get(f"http://127.0.0.1:{self._ports['provider']}/stats", timeout=5)
        stats: dict[str, int] = response.json()
        return stats

    def worker_logs(self) -> str:
        return "\n".join(f"== {w.name}\n{w.output()}" for w in self.workers)


def _children(pid: int) -> list[psutil.Process]:
    try:
        children: list[psutil.Process] = psutil.Process(pid).children()
        return children
    except psutil.NoSuchProcess:
        return []
