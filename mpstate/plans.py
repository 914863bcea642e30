"""Plans: the store's logic written once, as generators of I/O requests (sans-I/O).

Every store operation is a generator (a ``Plan``) that yields the requests it needs (a Redis
command or script, or a blocking wait) and receives each reply by ``send``; the value it returns
is the operation's result. A store then runs the plan: ``drive`` executes each request
synchronously, ``drive_async`` awaits it, each with an executor (``Executor``,
``AsyncExecutor``: one backend's I/O, as an httpx transport). The sync and asyncio stores are
therefore the same validation, guards, retries and decoding with a different loop around them
(httpx's auth flows work the same way).

An error raised while executing a request is thrown into the plan at the ``yield`` that asked
for it, so a plan handles I/O errors with plain ``try``/``except``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from functools import wraps
from typing import Any, ParamSpec, Protocol, TypeVar

__all__ = [
    "AsyncExecutor",
    "Blocking",
    "Executor",
    "Pause",
    "Plan",
    "drive",
    "drive_async",
    "immediate",
]

T = TypeVar("T")
P = ParamSpec("P")

#: A generator of requests that returns a ``T``.
Plan = Generator[Any, Any, T]


@dataclass(frozen=True, slots=True)
class Blocking:
    """A request to call ``wait()``, which blocks the calling thread (an in-process wait).

    The sync executor calls it in place; the asyncio one runs it in a worker thread so the event
    loop is never blocked.
    """

    wait: Callable[[], Any]


@dataclass(frozen=True, slots=True)
class Pause:
    """A request to wait ``seconds`` before the plan goes on (``time.sleep``/``asyncio.sleep``)."""

    seconds: float


class Executor(Protocol):
    """Carries out one request a plan yields and returns the reply: a backend's sync I/O."""

    def __call__(self, request: Any) -> Any: ...

    def close(self) -> None:
        """Close the connections it holds."""

    def reset_connections(self) -> None:
        """Forget its connections without closing them (in a forked child)."""


class AsyncExecutor(Protocol):
    """``Executor`` for asyncio: the reply is awaited."""

    def __call__(self, request: Any) -> Awaitable[Any]: ...

    async def aclose(self) -> None:
        """Close the connections it holds."""

    def reset_connections(self) -> None:
        """Forget its connections without closing them (in a forked child)."""


def immediate(function: Callable[P, T]) -> Callable[P, Plan[T]]:
    """Make a plan of a function that needs no I/O (the in-memory backend's primitives)."""

    @wraps(function)
    def plan(*args: P.args, **kwargs: P.kwargs) -> Plan[T]:
        return function(*args, **kwargs)
        yield  # unreachable: makes this function a generator

    return plan


def drive(plan: Plan[T], execute: Callable[[Any], Any]) -> T:
    """Run ``plan`` to its result, executing each request it yields with ``execute``."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            request = plan.throw(error) if error is not None else plan.send(reply)
        except StopIteration as stop:
            result: T = stop.value
            return result
        try:
            reply, error = execute(request), None
        except BaseException as exc:  # thrown into the plan, which re-raises what it cannot handle
            reply, error = None, exc


async def drive_async(plan: Plan[T], execute: Callable[[Any], Awaitable[Any]]) -> T:
    """Like ``drive``, awaiting each request."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            request = plan.throw(error) if error is not None else plan.send(reply)
        except StopIteration as stop:
            result: T = stop.value
            return result
        try:
            reply, error = await execute(request), None
        except BaseException as exc:
            reply, error = None, exc
