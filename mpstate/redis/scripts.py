"""The Lua scripts in ``scripts/``, one file per atomic operation, read once per process.

A line ``--- @include "name"`` in a script is replaced by ``scripts/includes/name.lua``, so a
helper shared by several scripts is written once (BullMQ's convention). Scripts run as EVALSHA by
their SHA1 and fall back to EVAL when a server does not know them yet (after a restart, a
failover or on a new cluster node); the sync and asyncio shells share these sources.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

__all__ = ["SCRIPT_NAMES", "LuaScript", "lua_script", "script_source"]

_INCLUDE = re.compile(r'^--- @include "([a-z_]+)"$', re.MULTILINE)

#: Every script the store runs.
SCRIPT_NAMES = (
    "acquire_lock",
    "add_index_entries",
    "claim_idempotency_key",
    "commit_run",
    "create_run",
    "extend_lock",
    "load_run",
    "page_index",
    "read_events",
    "record_unmatched",
    "release_lock",
    "settle_index_entries",
    "void_claim",
)


@dataclass(frozen=True, slots=True)
class LuaScript:
    name: str
    source: str
    sha: str


def _read(*parts: str) -> str:
    return (files("mpstate.redis") / "scripts").joinpath(*parts).read_text(encoding="utf-8")


def script_source(name: str) -> str:
    """The text of ``scripts/<name>.lua`` with its includes expanded."""
    return _INCLUDE.sub(lambda m: _read("includes", f"{m.group(1)}.lua"), _read(f"{name}.lua"))


@cache
def lua_script(name: str) -> LuaScript:
    """The script ``name`` with its SHA1 (what EVALSHA names it by)."""
    source = script_source(name)
    return LuaScript(name, source, hashlib.sha1(source.encode("utf-8")).hexdigest())
