"""Each Lua script's file names how many KEYS it takes, and a request with another count is
refused before it reaches Redis (BullMQ's naming: ``read_events-2.lua``)."""

from __future__ import annotations

import re
from importlib.resources import files

import pytest

from mpstate import MpStateError
from mpstate.redis.requests import Script, eval_args
from mpstate.redis.scripts import SCRIPT_NAMES, lua_script

_KEY_INDEX = re.compile(r"KEYS\[(\d+)\]")


def test_every_script_file_is_named_after_its_operation_and_key_count() -> None:
    folder = files("mpstate.redis") / "scripts"
    on_disk = {entry.name for entry in folder.iterdir() if entry.name.endswith(".lua")}
    assert on_disk == {lua_script(name).file_name for name in SCRIPT_NAMES}
    for name in SCRIPT_NAMES:
        script = lua_script(name)
        counts = f"{script.key_counts[0]}" + (
            f"-{script.key_counts[-1]}" if len(script.key_counts) > 1 else ""
        )
        assert script.file_name == f"{name}-{counts}.lua"


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_the_highest_key_a_script_names_agrees_with_its_file_name(name: str) -> None:
    script = lua_script(name)
    used = {int(index) for index in _KEY_INDEX.findall(script.source)}
    if len(script.key_counts) == 1:
        assert max(used) == script.key_counts[0], sorted(used)
    else:  # the others are reached in a loop (KEYS[i]): the literal ones fit the range
        assert max(used) <= script.key_counts[-1], sorted(used)


def test_a_request_with_another_number_of_keys_is_refused_before_it_is_sent() -> None:
    with pytest.raises(MpStateError, match=r"read_events-2\.lua takes 2 keys, not 3"):
        eval_args(Script("read_events", ["a", "b", "c"], []), by_sha=True)
    with pytest.raises(MpStateError, match=r"settle_index_entries-2-8\.lua takes 2 to 8 keys"):
        eval_args(Script("settle_index_entries", ["a"], []), by_sha=True)
    with pytest.raises(MpStateError, match=r"commit_run-3-19\.lua takes 3 to 19 keys"):
        eval_args(Script("commit_run", ["a", "b"], []), by_sha=True)
    assert eval_args(Script("commit_run", ["a", "b", "c"], ["x"]), by_sha=True)[2:] == (
        3,
        "a",
        "b",
        "c",
        "x",
    )
