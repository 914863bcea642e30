"""``mpstate.testing.contract.StoreContract``, the contract users run on their own backend, run on
every backend of this suite (the ``store`` fixture of tests/conftest.py), so it cannot rot."""

from __future__ import annotations

import pytest

from mpstate import PipelineStateStore
from mpstate.testing.contract import StoreContract


class TestStoreContract(StoreContract):
    @pytest.fixture
    def contract_store(self, store: PipelineStateStore) -> PipelineStateStore:
        return store
