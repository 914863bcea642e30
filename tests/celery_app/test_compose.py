"""docker-compose.yml, without Docker: read as data, then its app services run as local processes.

The static tests check what the file promises (the services, Redis' durability flags, the
healthchecks, configuration by environment). ``test_the_deployment_runs_the_demo`` then runs each
app service's own ``command`` with its own environment, rewritten only where the containers'
network differs from this machine's: the ``redis`` host becomes the suite's private Redis, the
fixed ports become free loopback ports, the key prefix and the queue become this test's. Each
service is waited for with its own healthcheck, and ``celery_app.demo --deployed`` must complete
runs through all of them: prefork worker, receiver, provider and Flower, over real HTTP and the
real broker.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import pytest
import redis
import yaml
from key_cleanup import delete_queue

from celery_app.settings import ENVIRONMENT
from mpstate.testing._servers import free_port

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
BIN = Path(sys.executable).parent

APP_SERVICES = ("worker", "flower", "receiver", "provider")

#: What the app services must be told by their environment.
REQUIRED_ENV = (
    "MPSTATE_BROKER_URL",
    "MPSTATE_STORE_URL",
    "MPSTATE_PREFIX",
    "MPSTATE_QUEUE",
    "MPSTATE_WEBHOOK_SECRETS",
    "MPSTATE_PROVIDER_URL",
    "MPSTATE_RECEIVER_URL",
)

#: The ports the file fixes (Flower, receiver, provider); each gets a free local port instead.
FIXED_PORTS = ("5555", "8000", "8001")

#: Longest wait for every service to pass its healthcheck, in seconds.
HEALTHY_WITHIN_S = 60.0

#: The demo against the deployment: two runs, followed until they end.
DEMO_ARGS = ("--deployed", "--runs", "2", "--timeout", "90")

#: Longest the deployed demo may take, in seconds (its own ``--timeout`` is 90).
DEMO_TIMEOUT_S = 100.0

#: Seconds a service has to stop after SIGTERM before it (and its children) get SIGKILL.
STOP_GRACE_S = 8.0


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"]
    return found


#: What this test's ``.env`` holds: the variables the file requires (``${VAR:?...}``).
TEST_DOT_ENV = {
    "MPSTATE_WEBHOOK_SECRETS": "video=test-secret-for-compose",
    "FLOWER_BASIC_AUTH": "admin:test-password-for-compose",
    "MPSTATE_DASHBOARD_TOKEN": "test-token-for-compose",
}


def interpolate(value: str, dot_env: dict[str, str] = TEST_DOT_ENV) -> str:
    """Compose's ``${VAR:-default}`` (the default) and ``${VAR:?error}`` (from ``dot_env``, else
    compose's refusal as a ``LookupError``), with nothing else set; ``$$`` is a literal ``$``."""

    def required(match: re.Match[str]) -> str:
        if match[1] not in dot_env:
            raise LookupError(f"compose refuses to start: {match[2]}")
        return dot_env[match[1]]

    value = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", value)
    value = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?([^}]*)\}", required, value)
    return value.replace("$$", "$")


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=value list form
        env = dict(item.split("=", 1) for item in env)
    return {str(name): interpolate(str(value)) for name, value in env.items()}


def healthcheck_test(service: dict[str, Any]) -> list[str]:
    test = service["healthcheck"]["test"]
    return ["CMD-SHELL", test] if isinstance(test, str) else [str(part) for part in test]


def option(args: list[str], name: str) -> str | None:
    """The value of ``--name=value`` or ``--name value`` in ``args``."""
    for index, arg in enumerate(args):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name and index + 1 < len(args):
            return args[index + 1]
    return None


# -- the file, as data -----------------------------------------------------------------------------


def test_the_file_defines_redis_and_the_app_services(services: dict[str, Any]) -> None:
    assert {"redis", *APP_SERVICES} <= set(services)


def test_redis_keeps_its_data_and_never_evicts(services: dict[str, Any]) -> None:
    command = services["redis"]["command"]
    if isinstance(command, str):
        command = shlex.split(command)
    assert command[0] == "redis-server"
    assert option(command, "--appendonly") == "yes"
    assert option(command, "--maxmemory-policy") == "noeviction"
    assert services["redis"]["volumes"], "the AOF needs a volume to survive the container"
    # No password: Redis is not published on the host at all (the services use the network).
    assert "ports" not in services["redis"]
    assert healthcheck_test(services["redis"])[1:] == ["redis-cli", "ping"]


def test_the_webhook_secrets_have_no_default_and_env_example_names_every_variable(
    compose: dict[str, Any],
) -> None:
    env = compose["x-mpstate-env"]
    with pytest.raises(LookupError, match="refuses to start"):
        interpolate(str(env["MPSTATE_WEBHOOK_SECRETS"]), {})
    with pytest.raises(LookupError, match="refuses to start"):
        interpolate(str(compose["services"]["flower"]["environment"]["FLOWER_BASIC_AUTH"]), {})
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE_FILE.read_text()))
    example = (COMPOSE_FILE.parent / ".env.example").read_text()
    named = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", example, flags=re.MULTILINE))
    assert used == named
    assert "change-me" not in COMPOSE_FILE.read_text()


@pytest.mark.parametrize("name", ["redis", *APP_SERVICES])
def test_every_service_has_a_healthcheck(services: dict[str, Any], name: str) -> None:
    test = healthcheck_test(services[name])
    assert test[0] in {"CMD", "CMD-SHELL"}
    assert len(test) > 1
    assert services[name]["healthcheck"].get("retries", 0) >= 1


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_are_configured_by_environment_once_redis_is_healthy(
    services: dict[str, Any], name: str
) -> None:
    service = services[name]
    env = environment_of(service)
    missing = [var for var in REQUIRED_ENV if not env.get(var)]
    assert not missing, f"{name} lacks {missing}"
    assert env["MPSTATE_BROKER_URL"].startswith("redis://redis:")
    assert env["MPSTATE_STORE_URL"].startswith("redis://redis:")
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"


def test_the_worker_gets_every_setting_from_its_environment(services: dict[str, Any]) -> None:
    env = environment_of(services["worker"])
    assert sorted(var for var in ENVIRONMENT.values() if not env.get(var)) == []


def test_the_services_agree_on_ports_and_the_queue(services: dict[str, Any]) -> None:
    env = environment_of(services["worker"])
    worker = services["worker"]["command"]
    assert option(worker, "--queues") == env["MPSTATE_QUEUE"]
    assert option(worker, "--pool") == "prefork"
    # What the worker's healthcheck pings is the node the worker names itself.
    assert option(worker, "--hostname") == "worker@%h"
    assert "worker@$HOSTNAME" in interpolate(healthcheck_test(services["worker"])[1])
    for name, url_var in (
        ("provider", "MPSTATE_PROVIDER_URL"),
        ("receiver", "MPSTATE_RECEIVER_URL"),
    ):
        command = services[name]["command"]
        assert env[url_var] == f"http://{name}:{option(command, '--port')}"
        assert option(command, "--host") == "0.0.0.0"  # reachable from the other containers
    flower = services["flower"]["command"]
    assert env["MPSTATE_FLOWER_URL"].endswith(f":{option(flower, '--port')}")


# -- the file, run -------------------------------------------------------------------------------


@dataclass
class Rewrite:
    """How the containers' names and ports map onto this machine, for this test."""

    redis_url: str
    prefix: str
    queue: str
    ports: dict[str, str]

    def text(self, value: str) -> str:
        value = re.sub(r"redis://redis:6379/\d+", self.redis_url, value)
        value = re.sub(
            r"http://[A-Za-z0-9.-]+:(\d+)",
            lambda m: f"http://127.0.0.1:{self.ports.get(m[1], m[1])}",
            value,
        )
        value = value.replace("0.0.0.0", "127.0.0.1")
        return re.sub(r"(?<=[:=])(5555|8000|8001)\b", lambda m: self.ports[m[1]], value)

    def arg(self, arg: str) -> str:
        if arg in self.ports:
            return self.ports[arg]
        if arg.startswith("--queues="):
            return f"--queues={self.queue}"
        if arg.startswith("--concurrency="):
            return "--concurrency=2"  # a 2-core machine
        return self.text(arg)

    def argv(self, command: list[str]) -> list[str]:
        return [executable(command[0]), *(self.arg(arg) for arg in command[1:])]

    def env(self, service_env: dict[str, str]) -> dict[str, str]:
        env = {name: self.text(value) for name, value in service_env.items()}
        env |= {"MPSTATE_PREFIX": self.prefix, "MPSTATE_QUEUE": self.queue}
        return env


def executable(name: str) -> str:
    if name == "python":
        return sys.executable
    if name in {"celery", "mpstate"}:
        return str(BIN / name)
    raise AssertionError(f"no local stand-in for the image's {name!r}")


def base_environment() -> dict[str, str]:
    """This process's environment without any deployment settings of its own."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("MPSTATE_", "PROVIDER_", "CELERY_", "FLOWER_"))
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    # The hostname the worker's ``worker@%h`` expands to, as Docker sets it in a container.
    env["HOSTNAME"] = socket.gethostname()
    return env


@dataclass
class Service:
    name: str
    argv: list[str]
    env: dict[str, str]
    healthcheck: list[str]
    check_timeout_s: float
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    log: TextIO | None = None

    def start(self) -> None:
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: prefork children go with it
        )

    def healthy(self) -> bool:
        """Run the service's own healthcheck once."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited with code {self.process.returncode}")
        try:
            result = subprocess.run(
                self.healthcheck,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self.check_timeout_s + 10,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False
        return result.returncode == 0

    def terminate(self) -> None:
        """Ask for a warm shutdown (a Celery worker lets its running tasks finish)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def kill(self, grace_s: float) -> None:
        """Wait up to ``grace_s`` for it to exit, then SIGKILL its whole process group."""
        process = self.process
        if process is not None:
            with suppress(subprocess.TimeoutExpired):
                process.wait(max(0.0, grace_s))
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # the group this test created
            with suppress(subprocess.TimeoutExpired):
                process.wait(5)
        if self.log is not None:
            self.log.close()

    def output(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-6000:]


def duration_s(value: str | None, default: float) -> float:
    """A compose duration like ``5s`` or ``1m30s``, in seconds."""
    if not value:
        return default
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", value))


def build_service(name: str, spec: dict[str, Any], rewrite: Rewrite, logs: Path) -> Service:
    env = base_environment() | rewrite.env(environment_of(spec))
    test = healthcheck_test(spec)
    if test[0] == "CMD-SHELL":
        words = interpolate(test[1]).split(" ", 1)
        words[0] = shlex.quote(executable(words[0]))
        healthcheck = ["/bin/sh", "-c", rewrite.text(" ".join(words))]
    else:
        healthcheck = [executable(test[1]), *(rewrite.text(interpolate(a)) for a in test[2:])]
    timeout = duration_s(spec["healthcheck"].get("timeout"), 30.0)
    return Service(name, rewrite.argv(spec["command"]), env, healthcheck, timeout, logs / name)


@dataclass
class Deployment:
    services: dict[str, Service] = field(default_factory=dict)

    def dump(self) -> None:
        for service in self.services.values():
            print(f"\n===== {service.name}: {shlex.join(service.argv)}\n{service.output()}")

    def stop(self) -> None:
        """SIGTERM to every service, then SIGKILL to what still runs after the grace."""
        for service in self.services.values():
            service.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for service in self.services.values():
            service.kill(deadline - time.monotonic())

    @contextmanager
    def explained(self) -> Iterator[None]:
        """Print every service's output when the block fails."""
        try:
            yield
        except BaseException:
            self.dump()
            raise


def free_ports_for(fixed: tuple[str, ...]) -> dict[str, str]:
    """A distinct free loopback port for each fixed port."""
    ports: set[int] = set()
    while len(ports) < len(fixed):
        ports.add(free_port())
    return dict(zip(fixed, map(str, sorted(ports)), strict=True))


@pytest.fixture
def deployment(
    services: dict[str, Any],
    redis_url: str,
    prefix: str,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> Iterator[Deployment]:
    """The app services running locally, each healthy by its own healthcheck."""
    queue = f"{prefix}-q"
    rewrite = Rewrite(redis_url, prefix, queue, free_ports_for(FIXED_PORTS))
    deployed = Deployment()
    try:
        for name in APP_SERVICES:
            deployed.services[name] = build_service(name, services[name], rewrite, tmp_path)
        # A fixed provider seed: its 20 % failures then never exhaust a run's retries.
        deployed.services["provider"].env["PROVIDER_SEED"] = "3"
        for service in deployed.services.values():
            service.start()
        with deployed.explained():
            deadline = time.monotonic() + HEALTHY_WITHIN_S
            waiting = list(deployed.services.values())
            while waiting:
                waiting = [service for service in waiting if not service.healthy()]
                if waiting and time.monotonic() > deadline:
                    names = [service.name for service in waiting]
                    raise AssertionError(f"not healthy within {HEALTHY_WITHIN_S} s: {names}")
                if waiting:
                    time.sleep(0.5)
        yield deployed
    finally:
        deployed.stop()
        delete_queue(redis_client, queue)
        # redis_client's teardown deletes the store's (and the demo cache's) keys under prefix.


@pytest.mark.slow
def test_the_deployment_runs_the_demo(deployment: Deployment) -> None:
    env = deployment.services["worker"].env
    with deployment.explained():
        try:
            result = subprocess.run(
                [sys.executable, "-m", "celery_app.demo", *DEMO_ARGS],
                cwd=ROOT,
                env=env | {"COLUMNS": "200"},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=DEMO_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            output = exc.output.decode() if isinstance(exc.output, bytes) else exc.output
            raise AssertionError(f"the deployed demo hung; its output:\n{output}") from exc
        explanation = f"exit code {result.returncode}; demo output:\n{result.stdout}"
        assert result.returncode == 0, explanation
        assert "2/2 run(s) completed" in result.stdout, explanation
        prefix = env["MPSTATE_PREFIX"]
        assert f"--prefix {prefix} runs show" in result.stdout, explanation
