"""``make package`` (``scripts/check_package.py``): what it refuses, without installing anything,
and one real wheel built from a copy of the source (about 2 s; the installs per extra are
``make package``'s, in CI)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from scripts.check_package import (
    EXTRAS,
    PackageCheckError,
    check_wheel,
    project_version,
    selected,
    source_files,
    wheel_problems,
)

ROOT = Path(__file__).resolve().parents[2]
OPTIONAL = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
#: Extras for working on mpstate, not for its users: no smoke install of their own.
REPOSITORY_EXTRAS = {"dev", "app", "docs"}
VERSION = project_version()


def requirements(extra: str) -> set[str]:
    """The distributions ``mpstate[extra]`` installs, through the extras it names."""
    names: set[str] = set()
    for requirement in OPTIONAL[extra]:
        nested = re.fullmatch(r"mpstate\[([a-z,]+)\]", requirement)
        if nested:
            for name in nested.group(1).split(","):
                names |= requirements(name)
        else:
            names.add(re.split(r"[\[<>=;~! ]", requirement, maxsplit=1)[0].lower())
    return names


def test_every_users_extra_is_installed_and_smoke_tested() -> None:
    checked = {extra.name for extra in EXTRAS}
    assert checked == {"", *(set(OPTIONAL) - REPOSITORY_EXTRAS)}


def test_the_extras_that_bring_the_cli_are_the_ones_whose_commands_are_run() -> None:
    for extra in EXTRAS:
        brings_cli = bool(extra.name) and {"click", "rich"} <= requirements(extra.name)
        assert bool(extra.commands) == brings_cli, extra.label


def test_the_receivers_extra_brings_the_command_that_serves_it() -> None:
    # `mpstate webhooks serve` is how the web extra is run: it needs click and rich too.
    assert {"click", "rich", "uvicorn", "starlette"} <= requirements("web")


def test_the_source_package_lists_its_data_files_and_no_bytecode() -> None:
    files = source_files()
    assert {"mpstate/py.typed", "mpstate/__init__.py"} <= files
    assert any(name.startswith("mpstate/redis/scripts/includes/") for name in files)
    assert any(name.startswith("mpstate/dashboard/templates/") for name in files)
    assert any(name.startswith("mpstate/dashboard/static/") for name in files)
    assert not [name for name in files if "__pycache__" in name or name.endswith(".pyc")]


def test_a_wheel_with_another_top_level_package_or_missing_data_is_refused() -> None:
    expected = {"mpstate/__init__.py", "mpstate/redis/scripts/load_run-2.lua"}
    dist_info = f"mpstate-{VERSION}.dist-info"
    good = {*expected, f"{dist_info}/METADATA", f"{dist_info}/RECORD"}
    assert wheel_problems(good, VERSION, expected) == []
    assert wheel_problems(good | {"celery_app/__init__.py"}, VERSION, expected) == [
        "not part of mpstate: celery_app/__init__.py"
    ]
    assert wheel_problems(good - {"mpstate/redis/scripts/load_run-2.lua"}, VERSION, expected) == [
        "missing from the wheel: mpstate/redis/scripts/load_run-2.lua"
    ]
    assert wheel_problems(good, "9.9.9", expected)[-1].startswith("no mpstate-9.9.9.dist-info/")


def test_a_wheel_that_packs_the_example_app_fails_the_check(tmp_path: Path) -> None:
    wheel = tmp_path / f"mpstate-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name in source_files():
            archive.writestr(name, "")
        archive.writestr("celery_app/__init__.py", "")
        archive.writestr(f"mpstate-{VERSION}.dist-info/METADATA", f"Version: {VERSION}\n")
    with pytest.raises(
        PackageCheckError, match=re.escape("not part of mpstate: celery_app/__init__.py")
    ):
        check_wheel(wheel, VERSION)


def test_extras_are_chosen_by_name_and_an_unknown_one_is_refused() -> None:
    assert [extra.name for extra in selected("web, bare")] == ["web", ""]
    assert selected(None) == list(EXTRAS)
    with pytest.raises(PackageCheckError, match="unknown extras"):
        selected("webb")


@pytest.mark.slow
def test_the_wheel_built_from_the_source_holds_mpstate_only(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: the build writes build/ and *.egg-info beside it
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "mpstate", source / "mpstate", ignore=shutil.ignore_patterns("__pycache__")
    )
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "dist"), str(source)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = (tmp_path / "dist").glob("mpstate-*.whl")
    check_wheel(wheel, VERSION)  # raises PackageCheckError with the list of problems
    with zipfile.ZipFile(wheel) as archive:
        top = {name.split("/")[0] for name in archive.namelist()}
    assert top == {"mpstate", f"mpstate-{VERSION}.dist-info"}
