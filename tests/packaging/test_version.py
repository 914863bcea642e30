"""One version: pyproject's ``version``, which the installed metadata, ``mpstate.__version__`` and
``mpstate --version`` all report."""

import importlib.metadata
import tomllib
from pathlib import Path

from click.testing import CliRunner

import mpstate
from mpstate.cli import cli

ROOT = Path(__file__).resolve().parents[2]


def test_the_version_is_the_installed_distributions() -> None:
    assert mpstate.__version__ == importlib.metadata.version("mpstate")


def test_the_installed_version_is_pyprojects() -> None:
    # Fails on a stale install (pyproject bumped, the venv not reinstalled): make install.
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert mpstate.__version__ == declared


def test_the_cli_prints_the_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"mpstate, version {mpstate.__version__}\n"


def test_the_changelog_has_an_unreleased_section_and_no_entry_above_the_version() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog
    released = [
        line.split("]")[0].removeprefix("## [")
        for line in changelog.splitlines()
        if line.startswith("## [") and not line.startswith("## [Unreleased]")
    ]
    # A released section is the version pyproject had at that release: never a later one.
    assert all(_key(version) <= _key(mpstate.__version__) for version in released)


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:3])
