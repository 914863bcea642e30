"""The Lua scripts in ``scripts/``, one file per atomic operation, read once per process.

A line ``--- @include "name"`` in a script is replaced by ``scripts/includes/name.lua``, so a
helper shared by several scripts is written once (BullMQ's convention). Scripts run as EVALSHA by
their SHA1 and fall back to EVAL when a server does not know them yet (after a restart, a
failover or on a new cluster node); the sync and asyncio shells share these sources.

A file is named after its operation and the number of KEYS it takes, as BullMQ names its
scripts: ``read_events-2.lua`` takes 2 keys, ``settle_index_entries-2-8.lua`` from 2 to 8. A
request with another number of keys is a bug, refused before it reaches Redis.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

__all__ = ["SCRIPT_NAMES", "LuaScript", "lua_script", "script_source"]

_INCLUDE = re.compile(r'^--- @include "([a-z_]+)"$', re.MULTILINE)
#: ``<name>-<keys>.lua`` or ``<name>-<fewest keys>-<most keys>.lua``.
_FILE_NAME = re.compile(r"^(?P<name>[a-z_]+)-(?P<fewest>\d+)(?:-(?P<most>\d+))?\.lua$")

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
    "read_last_event",
    "record_unmatched",
    "release_lock",
    "settle_index_entries",
    "void_claim",
)


@dataclass(frozen=True, slots=True)
class LuaScript:
    name: str
    #: Its file in ``scripts/``, which names how many keys it takes.
    file_name: str
    source: str
    sha: str
    #: The numbers of KEYS it takes, from its file name.
    key_counts: range


def _read(*parts: str) -> str:
    return (files("mpstate.redis") / "scripts").joinpath(*parts).read_text(encoding="utf-8")


@cache
def _script_files() -> dict[str, tuple[str, range]]:
    """Each script's file name and the numbers of keys it takes, by operation name."""
    found: dict[str, tuple[str, range]] = {}
    for entry in (files("mpstate.redis") / "scripts").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match is None:
            continue
        fewest = int(match["fewest"])
        most = int(match["most"] or fewest)
        found[match["name"]] = (entry.name, range(fewest, most + 1))
    return found


def script_source(name: str) -> str:
    """The text of the script ``name`` with its includes expanded."""
    file_name, _ = _script_files()[name]
    return _INCLUDE.sub(lambda m: _read("includes", f"{m.group(1)}.lua"), _read(file_name))


@cache
def lua_script(name: str) -> LuaScript:
    """The script ``name`` with its SHA1 (what EVALSHA names it by)."""
    file_name, key_counts = _script_files()[name]
    source = script_source(name)
    sha = hashlib.sha1(source.encode("utf-8")).hexdigest()
    return LuaScript(name, file_name, source, sha, key_counts)
