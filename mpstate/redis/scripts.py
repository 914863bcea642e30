"""Loads the Lua scripts in ``scripts/`` (one file per atomic operation) for a client."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from typing import Any

__all__ = ["Scripts", "load_scripts"]


@dataclass(frozen=True, slots=True)
class Scripts:
    """The registered scripts. Each runs as EVALSHA and reloads itself after NOSCRIPT."""

    create_run: Any
    commit_run: Any
    acquire_lock: Any
    release_lock: Any
    extend_lock: Any
    prune_index: Any


def script_source(name: str) -> str:
    """The text of ``scripts/<name>.lua``."""
    return (files("mpstate.redis") / "scripts" / f"{name}.lua").read_text(encoding="utf-8")


def load_scripts(client: Any) -> Scripts:
    """Register every script with ``client`` (no round trip until first use)."""
    names = Scripts.__dataclass_fields__
    return Scripts(**{name: client.register_script(script_source(name)) for name in names})
