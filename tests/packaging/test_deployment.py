"""Deployment files fit for production: no default secret anywhere, images that install their
dependencies before the code and run as a non-root user, and the example app imported from the
repository (or the image's ``/app``), never installed. The images are built here only where a
Docker daemon answers."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def index_of(steps: list[tuple[str, str]], instruction: str, pattern: str) -> int:
    for index, (name, arguments) in enumerate(steps):
        if name == instruction and re.search(pattern, arguments):
            return index
    raise AssertionError(f"no {instruction} matching {pattern!r}")


def without_secrets(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MPSTATE_", "PROVIDER_"))}
    return env | {"PYTHONPATH": str(ROOT)} | extra


# -- the receiver and the simulated provider refuse to start without secrets ------------------


@pytest.mark.parametrize(
    ("secrets", "message"),
    [
        (None, "Missing option '--secrets'"),
        ("", "Missing option '--secrets'"),
        ("video=", "webhook secret entry 1 is not provider=secret"),
        ("just-a-secret-typed-alone", "webhook secret entry 1 is not provider=secret"),
        (",", "configure at least one provider secret"),
    ],
    ids=["unset", "empty", "no secret", "no provider", "no entry"],
)
def test_the_receiver_refuses_to_start_without_a_secret(
    tmp_path: Path, secrets: str | None, message: str
) -> None:
    # As the image runs it: the example app from PYTHONPATH, not from the working directory.
    env = without_secrets() if secrets is None else without_secrets(MPSTATE_WEBHOOK_SECRETS=secrets)
    result = subprocess.run(
        [str(BIN / "mpstate"), "webhooks", "serve", "--app", "celery_app", "--port", "1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "just-a-secret-typed-alone" not in result.stderr  # a secret is never echoed
    assert "Traceback" not in result.stderr


def test_the_simulated_provider_refuses_to_start_without_its_secret(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "celery_app.provider", "--port", "1"],
        cwd=tmp_path,
        env=without_secrets(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "MPSTATE_WEBHOOK_SECRETS has no secret for provider 'video'" in result.stderr


def test_the_example_app_has_no_default_secret() -> None:
    from celery_app.settings import Settings  # noqa: PLC0415 - the example app, on purpose

    settings = Settings.from_env({})
    assert settings.webhook_secrets == ""
    with pytest.raises(LookupError, match="MPSTATE_WEBHOOK_SECRETS"):
        settings.secret_for("video")


def test_the_example_app_is_not_installed() -> None:
    # Imported from the repository root (pytest's pythonpath), not from site-packages.
    import celery_app  # noqa: PLC0415

    assert Path(celery_app.__file__ or "").resolve().parent == ROOT / "celery_app"


# -- the Dockerfiles -----------------------------------------------------------------------------


def test_the_example_image_installs_dependencies_before_copying_the_code() -> None:
    steps = instructions(ROOT / "Dockerfile")
    dependencies = index_of(steps, "RUN", r"pip install \"/src\[app\]\"")
    assert index_of(steps, "COPY", r"^pyproject\.toml README\.md") < dependencies
    assert dependencies < index_of(steps, "COPY", r"^mpstate ")
    assert dependencies < index_of(steps, "COPY", r"^celery_app ")
    # mpstate runs installed; the example app from /app, which is not installed.
    assert index_of(steps, "RUN", r"pip install --no-deps /src") < index_of(
        steps, "COPY", r"^celery_app "
    )
    assert re.search(r"PYTHONPATH=/app\b", dict(steps)["ENV"])


@pytest.mark.parametrize("path", ["Dockerfile", "deploy/Dockerfile"])
def test_the_images_run_as_a_non_root_user_on_python_3_11_slim(path: str) -> None:
    steps = instructions(ROOT / path)
    assert steps[0] == ("FROM", "python:3.11-slim")
    users = [arguments for name, arguments in steps if name == "USER"]
    assert users and users[-1] not in {"root", "0"}
    assert index_of(steps, "RUN", r"useradd .*--uid 10001") < index_of(steps, "USER", ".")


def test_the_image_for_your_package_installs_mpstate_before_your_code() -> None:
    steps = instructions(ROOT / "deploy" / "Dockerfile")
    extras = index_of(steps, "ARG", r'MPSTATE_REQUIREMENT="mpstate\[celery,web,dashboard\]')
    install = index_of(steps, "RUN", r'pip install "\$\{MPSTATE_REQUIREMENT\}"')
    assert extras < install < index_of(steps, "COPY", r"^dist/\*\.whl")
    assert not [arguments for name, arguments in steps if "celery_app" in arguments]
    assert "MPSTATE_CELERY_APP=yourpackage.celery:app" in dict(steps)["ENV"]


def docker_answers() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    info = subprocess.run([docker, "info"], capture_output=True, timeout=30, check=False)
    return info.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not docker_answers(), reason="no Docker daemon answers")
def test_the_example_image_builds_and_runs_the_installed_mpstate_and_the_app_from_app() -> None:
    tag = "mpstate-example:package-test"
    subprocess.run(["docker", "build", "-t", tag, str(ROOT)], check=True, timeout=900)
    check = (
        "import celery_app, mpstate; "
        "assert '/site-packages/mpstate/' in mpstate.__file__, mpstate.__file__; "
        "assert celery_app.__file__.startswith('/app/celery_app/'), celery_app.__file__; "
        "print(mpstate.__version__)"
    )
    shown = subprocess.run(
        ["docker", "run", "--rm", tag, "python", "-c", check],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    import mpstate  # noqa: PLC0415

    assert shown.stdout.strip() == mpstate.__version__
    refused = subprocess.run(
        ["docker", "run", "--rm", tag, "mpstate", "webhooks", "serve", "--app", "celery_app"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert refused.returncode == 2
    assert "Missing option '--secrets'" in refused.stderr
