"""The public API is exactly what ``mpstate.__all__`` names (pinned, as httpx does)."""

import mpstate
import mpstate.errors


def test_all_names_each_public_name_once_and_every_one_imports() -> None:
    assert len(set(mpstate.__all__)) == len(mpstate.__all__)
    for name in mpstate.__all__:
        assert getattr(mpstate, name) is not None


def test_every_public_name_is_listed_in_all() -> None:
    public = {name for name in vars(mpstate) if not name.startswith("_")}
    modules = {"annotations", "TYPE_CHECKING", "Any", "changes", "errors", "events", "fields"}
    modules |= {"filters", "memory", "models", "patches", "store", "redis", "testing"}
    assert public - modules - set(mpstate.__all__) == set()


def test_every_error_derives_from_mpstate_error() -> None:
    for name in mpstate.errors.__all__:
        assert issubclass(getattr(mpstate.errors, name), mpstate.MpStateError)
    assert issubclass(mpstate.InvalidInputError, ValueError)
    assert issubclass(mpstate.VersionConflictError, mpstate.RunInProgressError)
    assert issubclass(mpstate.IdempotencyKeyInUseError, mpstate.RunInProgressError)
    assert issubclass(mpstate.LockTimeoutError, mpstate.RunInProgressError)
