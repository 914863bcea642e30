"""The public API is exactly what ``mpstate.__all__`` names (pinned, as httpx does)."""

from types import ModuleType

import mpstate
import mpstate.errors


def test_all_names_each_public_name_once_and_every_one_imports() -> None:
    assert len(set(mpstate.__all__)) == len(mpstate.__all__)
    for name in mpstate.__all__:
        assert getattr(mpstate, name) is not None


def test_every_public_name_is_listed_in_all() -> None:
    public = {
        name
        for name, value in vars(mpstate).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    }
    typing_names = {"annotations", "TYPE_CHECKING", "Any"}
    assert public - typing_names - set(mpstate.__all__) == set()


def test_the_celery_package_names_its_public_api() -> None:
    import mpstate.celery  # noqa: PLC0415 - the optional extra, imported on purpose here

    assert len(set(mpstate.celery.__all__)) == len(mpstate.celery.__all__)
    for name in mpstate.celery.__all__:
        assert getattr(mpstate.celery, name) is not None


def test_every_error_derives_from_mpstate_error() -> None:
    for name in mpstate.errors.__all__:
        assert issubclass(getattr(mpstate.errors, name), mpstate.MpStateError)
    assert issubclass(mpstate.InvalidInputError, ValueError)
    assert issubclass(mpstate.VersionConflictError, mpstate.RunInProgressError)
    assert issubclass(mpstate.IdempotencyKeyInUseError, mpstate.RunInProgressError)
    assert issubclass(mpstate.LockTimeoutError, mpstate.RunInProgressError)
    assert issubclass(mpstate.StaleFenceError, mpstate.LockLostError)
    assert issubclass(mpstate.StaleFenceError, mpstate.RunInProgressError)
    assert issubclass(mpstate.LockNotOwnedError, mpstate.LockLostError)


def test_the_asyncio_package_names_its_public_api() -> None:
    import mpstate.aio  # noqa: PLC0415 - the asyncio stores, imported on purpose here

    assert mpstate.aio.__all__ == sorted(mpstate.aio.__all__)
    for name in mpstate.aio.__all__:
        assert getattr(mpstate.aio, name) is not None
    assert issubclass(mpstate.aio.AsyncRedisPipelineStateStore, mpstate.aio.AsyncPipelineStateStore)
