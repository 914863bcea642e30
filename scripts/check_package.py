"""``make package``: the sdist and the wheel as a user gets them, checked before a release can be.

1. Build both with ``python -m build`` (the wheel is built from the sdist, so a file the sdist
   lacks fails here) into ``dist/``, and run ``twine check`` on them (metadata, README markup).
2. The wheel holds ``mpstate/`` and its ``.dist-info`` only (no ``celery_app``, ``chaos`` or
   ``tests``: a top-level package under a name many users have would shadow theirs), with every
   file of the source package (Lua scripts, templates, static assets, ``py.typed``), and its
   version is pyproject's.
3. For the bare package and for each extra, a fresh venv installs the wheel with that extra from
   the package index, imports what the extra is for and uses it a little (the smoke code below),
   and runs ``mpstate --help`` where the extra brings the CLI (else checks that the console
   script names the extra to install). A dependency missing from an extra fails here.

The venvs are made without pip and installed into by this interpreter's pip (``pip --python``),
several at once (``--jobs``); pip's own cache keeps a second run off the network.

    python scripts/check_package.py                 # everything (make package)
    python scripts/check_package.py --extras web    # one extra, on the wheel in dist/
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "mpstate"

#: What the console script prints (exit 2) where the cli extra is not installed.
CLI_HINT = "pip install 'mpstate[cli]'"

_QUIET = "import warnings; warnings.simplefilter('ignore')\n"

#: The bare package: the in-memory store, the asyncio one, and no example app beside it.
_BARE = """
import importlib.util
import mpstate, mpstate.aio
store = mpstate.InMemoryPipelineStateStore()
assert sum(store.count_by_status().values()) == 0
assert importlib.util.find_spec("celery_app") is None, "celery_app is installed"
redis_stores = [(mpstate, "RedisPipelineStateStore"), (mpstate.aio, "AsyncRedisPipelineStateStore")]
for module, name in redis_stores:
    try:
        getattr(module, name)
    except ImportError as exc:  # the Redis store says which extra it needs
        assert "mpstate[redis]" in str(exc), exc
    else:
        raise AssertionError(f"{name} imported without the redis extra")
"""

_REDIS = """
from mpstate import RedisPipelineStateStore
from mpstate.aio import AsyncRedisPipelineStateStore
from mpstate.redis.scripts import SCRIPT_NAMES, script_source
for name in SCRIPT_NAMES:
    assert "KEYS" in script_source(name), name
"""

_CELERY = """
from celery import Celery
import mpstate
from mpstate.celery import MpState
app = Celery("smoke", broker="memory://", set_as_current=False)
mp = MpState(app, mpstate.InMemoryPipelineStateStore())
assert "mpstate.resolve_webhook" in app.tasks
mp.close()
"""

_WEB = """
from celery import Celery
from starlette.testclient import TestClient
import mpstate.metrics
from mpstate.webhooks import parse_secrets, webhook_app
app = Celery("smoke", broker="memory://", set_as_current=False)
receiver = webhook_app(app, parse_secrets("video=smoke"), metrics=True)
with TestClient(receiver) as client:
    assert client.get("/healthz").json()["providers"] == ["video"]
    assert client.post("/webhooks/video", content=b"{}").status_code == 401
    assert client.get("/metrics").status_code == 200
"""

_CLI = """
from click.testing import CliRunner
from mpstate.cli import cli
assert CliRunner().invoke(cli, ["runs", "--help"]).exit_code == 0
"""

_DASHBOARD = """
from starlette.testclient import TestClient
import mpstate
from mpstate.dashboard import TokenAuth, dashboard_app
app = dashboard_app(mpstate.InMemoryPipelineStateStore(), auth=TokenAuth("smoke-token"))
with TestClient(app) as client:
    page = client.get("/")
    assert page.status_code == 200, page.status_code
    for asset in ("/static/dashboard.css", "/static/dashboard.js"):
        assert asset in page.text, asset
        assert client.get(asset).status_code == 200, asset
"""

_OTEL = """
import mpstate.tracing
assert mpstate.tracing.trace is not None, "opentelemetry-api is not importable"
"""


@dataclass(frozen=True)
class Extra:
    """One install to check: ``mpstate[name]`` (the bare package for ``""``)."""

    name: str
    #: Python run in the venv after the install (its own directory as the working directory).
    smoke: str
    #: ``mpstate`` commands whose ``--help`` must answer 0; none: the CLI must name its extra.
    commands: tuple[tuple[str, ...], ...] = ()

    @property
    def requirement_suffix(self) -> str:
        return f"[{self.name}]" if self.name else ""

    @property
    def label(self) -> str:
        return self.name or "(bare)"


EXTRAS = (
    Extra("", _BARE),
    Extra("redis", _REDIS),
    Extra("celery", _CELERY),
    Extra("web", _WEB, ((), ("webhooks", "serve"))),
    Extra("cli", _CLI, ((), ("runs", "list"), ("events",))),
    Extra("dashboard", _DASHBOARD, ((), ("dashboard", "serve"), ("metrics", "serve"))),
    Extra("otel", _OTEL),
)


class PackageCheckError(Exception):
    """A package check did not hold; the message says which and why."""


# -- the artifacts ----------------------------------------------------------------------------


def project_version(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """The ``version`` pyproject.toml declares."""
    version: str = tomllib.loads(pyproject.read_text())["project"]["version"]
    return version


def build(dist: Path) -> tuple[Path, Path]:
    """Build the sdist and the wheel into ``dist`` (earlier mpstate artifacts removed first)."""
    dist.mkdir(parents=True, exist_ok=True)
    for old in dist.glob(f"{PACKAGE}-*"):
        old.unlink()
    run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], quiet=True)
    return artifacts(dist)


def artifacts(dist: Path) -> tuple[Path, Path]:
    """The one sdist and the one wheel in ``dist``."""
    sdists = sorted(dist.glob(f"{PACKAGE}-*.tar.gz"))
    wheels = sorted(dist.glob(f"{PACKAGE}-*.whl"))
    if len(sdists) != 1 or len(wheels) != 1:
        raise PackageCheckError(
            f"expected one sdist and one wheel in {dist}, found {sdists + wheels}"
        )
    return sdists[0], wheels[0]


def source_files(package_dir: Path = ROOT / PACKAGE) -> set[str]:
    """Every file of the source package, as wheel paths (``mpstate/...``); bytecode left out."""
    return {
        path.relative_to(package_dir.parent).as_posix()
        for path in package_dir.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def wheel_problems(names: Iterable[str], version: str, expected: set[str]) -> list[str]:
    """What is wrong with a wheel holding ``names``: files outside ``mpstate/`` and its
    dist-info, and files of the source package (``expected``) it lacks."""
    names = set(names)
    dist_info = f"{PACKAGE}-{version}.dist-info/"
    problems = [
        f"not part of mpstate: {name}"
        for name in sorted(names)
        if not name.startswith((f"{PACKAGE}/", dist_info))
    ]
    problems += [f"missing from the wheel: {name}" for name in sorted(expected - names)]
    if f"{dist_info}METADATA" not in names:
        problems.append(f"no {dist_info}METADATA (is the version {version}?)")
    return problems


def check_wheel(wheel: Path, version: str) -> None:
    """The wheel holds mpstate only, all of it, under pyproject's version and extras."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        problems = wheel_problems(names, version, source_files())
        dist_info = f"{PACKAGE}-{version}.dist-info"
        if not problems:
            top_level = archive.read(f"{dist_info}/top_level.txt").decode().split()
            if top_level != [PACKAGE]:
                problems.append(f"top_level.txt names {top_level}, not [{PACKAGE!r}]")
            metadata = Parser().parsestr(archive.read(f"{dist_info}/METADATA").decode())
            if metadata["Version"] != version:
                problems.append(f"METADATA says version {metadata['Version']}, not {version}")
            declared = set(metadata.get_all("Provides-Extra") or ())
            wanted = {extra.name for extra in EXTRAS if extra.name}
            if not wanted <= declared:
                problems.append(f"extras not declared: {sorted(wanted - declared)}")
    if problems:
        raise PackageCheckError(f"{wheel.name}:\n  " + "\n  ".join(problems))


def check_sdist(sdist: Path, version: str) -> None:
    """The sdist unpacks to ``mpstate-<version>/`` and carries the package's data files."""
    prefix = f"{PACKAGE}-{version}/"
    with tarfile.open(sdist) as archive:
        names = set(archive.getnames())
    outside = sorted(name for name in names if not name.startswith(prefix.rstrip("/")))
    wanted = {prefix + name for name in source_files() if not name.endswith(".py")}
    problems = [f"outside {prefix}: {name}" for name in outside]
    problems += [f"missing from the sdist: {name}" for name in sorted(wanted - names)]
    if problems:
        raise PackageCheckError(f"{sdist.name}:\n  " + "\n  ".join(problems))


# -- the installs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    extra: Extra
    seconds: float
    error: str | None = None


def run(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    quiet: bool = False,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``argv``, raising ``PackageCheckError`` with its output when it fails."""
    result = subprocess.run(
        list(argv), cwd=cwd, env=env, text=True, capture_output=True, check=False
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        raise PackageCheckError(f"{' '.join(argv)} exited {result.returncode}:\n{output}")
    if not quiet and result.stdout.strip():
        print(result.stdout.strip())
    return result


def clean_environment() -> dict[str, str]:
    """This environment without what would let the venv see the repository or another venv."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    return {key: value for key, value in os.environ.items() if key not in drop}


def check_extra(extra: Extra, wheel: Path, version: str, workdir: Path) -> Outcome:
    """A fresh venv with ``wheel`` and ``extra`` from the index: smoke code, then the CLI."""
    started = time.monotonic()
    venv = workdir / f"venv-{extra.name or 'bare'}"
    env = clean_environment()
    try:
        run([sys.executable, "-m", "venv", "--without-pip", str(venv)], quiet=True)
        python = venv / "bin" / "python"
        run(
            [
                sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                "--no-compile", "--disable-pip-version-check", f"{wheel}{extra.requirement_suffix}",
            ],
            quiet=True,
            env=env,
        )  # fmt: skip
        where = f"assert mpstate.__file__.startswith({str(venv)!r}), mpstate.__file__\n"
        release = f"assert mpstate.__version__ == {version!r}, mpstate.__version__\n"
        code = _QUIET + "import mpstate\n" + where + release + extra.smoke
        # Run from the venv's own directory: the repository's mpstate/ must not shadow the wheel.
        run([str(python), "-c", code], cwd=venv, env=env, quiet=True)
        check_console_script(extra, venv / "bin" / "mpstate", version, venv, env)
    except PackageCheckError as exc:
        return Outcome(extra, time.monotonic() - started, str(exc))
    return Outcome(extra, time.monotonic() - started)


def check_console_script(
    extra: Extra, script: Path, version: str, cwd: Path, env: dict[str, str]
) -> None:
    """``mpstate --help`` (and the extra's commands) answer, or the script names the cli extra."""
    if not extra.commands:
        result = subprocess.run(
            [str(script), "--help"], cwd=cwd, env=env, text=True, capture_output=True, check=False
        )
        if result.returncode != 2 or CLI_HINT not in result.stderr:
            raise PackageCheckError(
                f"mpstate --help without the cli extra exited {result.returncode} "
                f"instead of 2 with {CLI_HINT!r}:\n{result.stdout}{result.stderr}"
            )
        return
    for command in extra.commands:
        run([str(script), *command, "--help"], cwd=cwd, env=env, quiet=True)
    shown = run([str(script), "--version"], cwd=cwd, env=env, quiet=True).stdout
    if version not in shown:
        raise PackageCheckError(f"mpstate --version printed {shown!r}, not version {version}")


def check_installs(wheel: Path, version: str, extras: Sequence[Extra], jobs: int) -> None:
    """Every extra in its own venv, ``jobs`` at a time; all failures reported together."""
    with (
        tempfile.TemporaryDirectory(prefix="mpstate-package-") as tmp,
        ThreadPoolExecutor(max_workers=jobs) as pool,
    ):
        outcomes = list(
            pool.map(lambda extra: check_extra(extra, wheel, version, Path(tmp)), extras)
        )
    for outcome in outcomes:
        status = "ok" if outcome.error is None else "FAILED"
        print(
            f"  mpstate{outcome.extra.requirement_suffix:<12} {status:<6} {outcome.seconds:5.1f} s"
        )
    failed = [outcome for outcome in outcomes if outcome.error is not None]
    if failed:
        details = "\n\n".join(f"[{o.extra.label}] {o.error}" for o in failed)
        raise PackageCheckError(f"{len(failed)} install(s) failed:\n{details}")


# -- the command ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dist", type=Path, default=ROOT / "dist", help="[default: dist/]")
    parser.add_argument(
        "--no-build", action="store_true", help="check the sdist and wheel already in --dist"
    )
    parser.add_argument(
        "--extras",
        help="comma-separated extras to install ('' or 'bare': no extra) [default: all]",
    )
    parser.add_argument("--jobs", type=int, default=4, help="venvs at once [default: 4]")
    return parser.parse_args(argv)


def selected(extras_arg: str | None) -> list[Extra]:
    """The extras ``--extras`` names (every one without it)."""
    if extras_arg is None:
        return list(EXTRAS)
    by_name = {extra.name: extra for extra in EXTRAS} | {"bare": EXTRAS[0]}
    names = [name.strip() for name in extras_arg.split(",")]
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise PackageCheckError(
            f"unknown extras {unknown}; known: {sorted(e.label for e in EXTRAS)}"
        )
    return [by_name[name] for name in names]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    try:
        extras = selected(args.extras)
        version = project_version()
        if args.no_build:
            sdist, wheel = artifacts(args.dist)
        else:
            print(f"building the sdist and wheel of mpstate {version} into {args.dist}")
            sdist, wheel = build(args.dist)
        built = time.monotonic()
        run([sys.executable, "-m", "twine", "check", "--strict", str(sdist), str(wheel)])
        check_sdist(sdist, version)
        check_wheel(wheel, version)
        print(f"{wheel.name}: mpstate/ and its dist-info only, every package file present")
        print(f"installing it with each extra ({len(extras)} venvs, {args.jobs} at a time):")
        check_installs(wheel, version, extras, max(1, args.jobs))
    except PackageCheckError as exc:
        print(f"package check failed: {exc}", file=sys.stderr)
        return 1
    done = time.monotonic()
    build_s = 0.0 if args.no_build else built - started
    print(f"package check passed in {done - started:.0f} s (build {build_s:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
