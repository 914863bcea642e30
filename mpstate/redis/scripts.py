"""Loads the Lua scripts in ``scripts/`` (one file per atomic operation) for a client.

A line ``--- @include "name"`` in a script is replaced by ``scripts/includes/name.lua``, so a
helper shared by several scripts is written once (BullMQ's convention).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

__all__ = ["Scripts", "load_scripts", "script_source"]

_INCLUDE = re.compile(r'^--- @include "([a-z_]+)"$', re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Scripts:
    """The registered scripts. Each runs as EVALSHA and reloads itself after NOSCRIPT."""

    create_run: Any
    commit_run: Any
    load_run: Any
    index_run: Any
    page_index: Any
    prune_index: Any
    acquire_lock: Any
    release_lock: Any
    extend_lock: Any


def _read(*parts: str) -> str:
    return (files("mpstate.redis") / "scripts").joinpath(*parts).read_text(encoding="utf-8")


def script_source(name: str) -> str:
    """The text of ``scripts/<name>.lua`` with its includes expanded."""
    return _INCLUDE.sub(lambda m: _read("includes", f"{m.group(1)}.lua"), _read(f"{name}.lua"))


def load_scripts(client: Any) -> Scripts:
    """Register every script with ``client`` (no round trip until first use)."""
    names = Scripts.__dataclass_fields__
    return Scripts(**{name: client.register_script(script_source(name)) for name in names})
