"""Driving a Redis store's plan by hand, one request at a time, to stop a writer mid-way.

A store operation is a plan (``mpstate.plans``): a generator that yields Redis requests and is
sent their replies. ``PlanSteps`` carries the requests out with the store's own executor, as
the sync shell does (a ``Pause`` sleeps), but lets a test stop after any of them (a writer that
dies there, or stalls while others run), or just before one (``run_until``), and resume later.
An ``Ordered`` request (requests that must take effect in order, e.g. index entries added before
the run's script) is carried out one request per step, as the shell does on a cluster, so a test
can stop between them too.
"""

from __future__ import annotations

from typing import Any

from mpstate import RedisPipelineStateStore
from mpstate.plans import Pause, Plan
from mpstate.redis.requests import Batch, Command, Ordered, Script

__all__ = ["PAUSE", "PlanSteps", "request_names"]

#: The name ``request_names`` gives a ``Pause`` request.
PAUSE = "Pause"


def request_names(request: Any) -> list[str]:
    """The script names (or command names, or ``PAUSE``) one request carries out, in order."""
    if isinstance(request, Ordered):
        return [name for inner in request.requests for name in request_names(inner)]
    if isinstance(request, Pause):
        return [PAUSE]
    items = request.items if isinstance(request, Batch) else (request,)
    names = []
    for item in items:
        if isinstance(item, Script):
            names.append(item.name)
        elif isinstance(item, Command):
            names.append(str(item.args[0]).upper())
    return names


class PlanSteps:
    """One plan of ``store``, carried out request by request."""

    def __init__(self, store: RedisPipelineStateStore, plan: Plan[Any]) -> None:
        self.store = store
        self.plan = plan
        #: Every request executed so far (the parts of an ``Ordered`` one by one).
        self.executed: list[Any] = []
        self.done = False
        self.result: Any = None
        #: The reply to the request executed last.
        self.last_reply: Any = None
        self._reply: Any = None
        self._error: BaseException | None = None
        self._next: Any = None  # the next request, asked of the plan but not executed yet
        self._next_is_part = False  # ... and whether it is a part of an Ordered request
        self._ordered: list[Any] = []  # the parts of an Ordered request not asked for yet
        self._ordered_replies: list[Any] = []

    def peek(self) -> Any:
        """The request the plan will execute next, without executing it (None once returned)."""
        if self._next is None and not self.done:
            if self._ordered:
                self._next, self._next_is_part = self._ordered.pop(0), True
                return self._next
            try:
                if self._error is not None:
                    request = self.plan.throw(self._error)
                else:
                    request = self.plan.send(self._reply)
            except StopIteration as stop:
                self.done, self.result = True, stop.value
                return None
            if isinstance(request, Ordered) and request.requests:
                self._ordered, self._ordered_replies = list(request.requests), []
                self._next, self._next_is_part = self._ordered.pop(0), True
            else:
                self._next, self._next_is_part = request, False
        return self._next

    def step(self) -> Any:
        """Execute the next request and return it (None once the plan has returned).

        An error the plan does not handle is raised here, as it would be from the store call.
        """
        assert not self.done, "the plan has already returned"
        request = self.peek()
        if request is None:
            return None
        self._next = None
        reply = self._carry_out(request)
        if self._next_is_part:
            if self._error is not None:
                self._ordered = []  # the rest is not sent; the error goes to the plan
            else:
                self._ordered_replies.append(reply)
                self._reply = None if self._ordered else self._ordered_replies
        return request

    def _carry_out(self, request: Any) -> Any:
        try:
            self._reply, self._error = self.store._executor(request), None
        except Exception as exc:  # thrown into the plan at its next step
            self._reply, self._error = None, exc
        self.executed.append(request)
        self.last_reply = self._reply
        return self._reply

    def run_through(self, name: str) -> Any:
        """Step until a request carrying script (or command) ``name`` has been executed; return
        its reply. Fails if the plan returns first."""
        while True:
            request = self.step()
            assert request is not None, f"the plan returned before running {name}"
            if name in request_names(request):
                if self._error is not None:
                    raise self._error
                return self.last_reply

    def run_until(self, name: str) -> Any:
        """Step until the next request carries script (or command) ``name``, and stop before it:
        return that request, not executed yet. Fails if the plan returns first."""
        while True:
            request = self.peek()
            assert request is not None, f"the plan returned before running {name}"
            if name in request_names(request):
                return request
            self.step()

    def finish(self, max_requests: int = 1000) -> Any:
        """Step to the end; the plan's result (its errors are raised).

        Fails if the plan is still going after ``max_requests`` more requests (a livelock).
        """
        for _ in range(max_requests):
            if self.done:
                return self.result
            self.step()
        assert self.done, f"the plan still runs after {max_requests} requests: {self.names()[-8:]}"
        return self.result

    def names(self) -> list[str]:
        """Every script and command executed so far (and ``PAUSE``s), in order."""
        return [name for request in self.executed for name in request_names(request)]
