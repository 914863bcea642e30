"""``StoreShell``: what the sync and the asyncio store have in common, written once.

A store is a backend (``mpstate.core.StoreCore``: the plans, validation and tenancy) and an
executor (the I/O). Both shells hold the pair the same way and answer ``options``,
``tenant_id`` and ``for_tenant`` from the backend; they differ only in how they drive a plan
(``mpstate.store``: calls, ``mpstate.aio.store``: awaits).
"""

from __future__ import annotations

import copy
from typing import Generic, Self, TypeVar

from mpstate.core import StoreCore
from mpstate.options import StoreOptions

__all__ = ["StoreShell"]

E = TypeVar("E")


class StoreShell(Generic[E]):
    """A backend and the executor that carries out its plans' requests."""

    def __init__(self, backend: StoreCore, executor: E) -> None:
        self._backend = backend
        self._executor = executor

    @property
    def options(self) -> StoreOptions:
        """The lifetimes and lock timings this store was built with."""
        return self._backend.options

    @property
    def tenant_id(self) -> str | None:
        """The tenant this store is scoped to (None: the unscoped store)."""
        return self._backend.tenant_id

    def for_tenant(self, tenant_id: str) -> Self:
        """A view of this store that sees and creates only ``tenant_id``'s runs.

        Another tenant's run is "not found" through the view; creating one is refused. The view
        shares connections and state with this store.
        """
        view = copy.copy(self)
        view._backend = self._backend.for_tenant(tenant_id)
        return view
