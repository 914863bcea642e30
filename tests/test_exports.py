"""The public API is pinned, as httpx pins its own (its tests/test_exported_members.py).

For each public package, ``__all__`` is exactly the list written here; no public name of the
package is left out of it; and every name in it is documented: docs/api.md renders the package
(``::: package``, whose members are its ``__all__`` names that have a docstring) or a docs page
names it. Implementation modules export only what they define: a helper such as
``mpstate._checks.check_id`` is never re-exported by a public module. Adding, removing or
re-exporting a name fails here until this file (and the docs) say so.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from functools import cache
from pathlib import Path
from types import FunctionType, ModuleType
from typing import Any

import griffe
import pytest

import mpstate
import mpstate.errors

ROOT = Path(__file__).resolve().parent.parent

#: Each public package's ``__all__``, written out: a change to the public API changes this file.
PUBLIC_API: dict[str, list[str]] = {
    "mpstate": [
        "ALLOWED_RUN_TRANSITIONS",
        "TERMINAL_RUN_STATUSES",
        "Approval",
        "AuditFinding",
        "BudgetExceededError",
        "CommitResult",
        "ExternalJob",
        "FailurePolicy",
        "GateSpec",
        "GateTimeout",
        "HeldLock",
        "IdempotencyKeyInUseError",
        "InMemoryPipelineStateStore",
        "InvalidInputError",
        "InvalidPipelineError",
        "InvalidResumeTokenError",
        "InvalidTransitionError",
        "LockLostError",
        "LockNotOwnedError",
        "LockTimeoutError",
        "MpStateError",
        "NotInRunError",
        "PipelineEvent",
        "PipelineRun",
        "PipelineRunStatus",
        "PipelineStateStore",
        "RedisPipelineStateStore",
        "RunAlreadyExistsError",
        "RunCancelled",
        "RunCompleted",
        "RunCreated",
        "RunFailed",
        "RunFilter",
        "RunInProgressError",
        "RunNotFoundError",
        "RunResumed",
        "RunStarted",
        "RunSuspended",
        "StaleFenceError",
        "StateStoreUnavailableError",
        "StepCached",
        "StepCompleted",
        "StepError",
        "StepFailed",
        "StepGated",
        "StepProgress",
        "StepStarted",
        "StepState",
        "StepStatus",
        "StepWaiting",
        "StoreOptions",
        "SuspendReason",
        "UnmatchedCallback",
        "UnmatchedReason",
        "VersionConflictError",
        "WebhookSignatureError",
        "WriteNotReplicatedError",
        "audit_run",
        "log_state",
        "parse_event",
        "replay_run",
    ],
    "mpstate.aio": [
        "AsyncHeldLock",
        "AsyncInMemoryPipelineStateStore",
        "AsyncPipelineStateStore",
        "AsyncRedisPipelineStateStore",
    ],
    "mpstate.celery": [
        "RECONCILE",
        "RESOLVE_WEBHOOK",
        "ROLE",
        "RUN_ID",
        "STEP_ID",
        "STEP_ID_OPTION",
        "CelerySettings",
        "MpState",
        "PayloadAdapter",
        "PipelineTask",
        "ProviderError",
        "ReconcilePolicy",
        "ReconcileReport",
        "Reconciler",
        "StalledStep",
        "StepIdentity",
        "StepResult",
        "WebhookOutcome",
        "default_adapter",
        "is_canvas",
        "revoke_running_steps",
        "steps_from_canvas",
        "with_step_id",
    ],
    "mpstate.webhooks": [
        "DEFAULT_MAX_BODY_BYTES",
        "DEFAULT_TOLERANCE_S",
        "SIGNATURE_HEADER",
        "TIMESTAMP_HEADER",
        "parse_secrets",
        "sign",
        "signed_headers",
        "verify",
        "webhook_app",
    ],
    "mpstate.redis": ["RedisKeys", "RedisPipelineStateStore"],
    "mpstate.testing": [
        "RedisServer",
        "WebhookRequest",
        "assert_event_kinds",
        "deliver",
        "describe_log",
        "sign_webhook",
        "wait_for_status",
    ],
    "mpstate.dashboard": ["BasicAuth", "DashboardAuth", "LoginAuth", "TokenAuth", "dashboard_app"],
    "mpstate.metrics": [
        "MetricsApp",
        "RunMetrics",
        "StoreCollector",
        "StoreSnapshot",
        "WebhookAnswers",
        "instrument",
        "metrics_app",
        "multiprocess_dir",
        "multiprocess_registry",
    ],
    "mpstate.tracing": [
        "message_carrier",
        "new_run_context",
        "publishing",
        "resolve_span",
        "step_span",
        "trace_headers",
    ],
    "mpstate.errors": [
        "BudgetExceededError",
        "IdempotencyKeyInUseError",
        "InvalidInputError",
        "InvalidPipelineError",
        "InvalidResumeTokenError",
        "InvalidTransitionError",
        "LockLostError",
        "LockNotOwnedError",
        "LockTimeoutError",
        "MpStateError",
        "NotInRunError",
        "RunAlreadyExistsError",
        "RunInProgressError",
        "RunNotFoundError",
        "StaleFenceError",
        "StateStoreUnavailableError",
        "VersionConflictError",
        "WebhookSignatureError",
        "WriteNotReplicatedError",
    ],
}

PACKAGES = sorted(PUBLIC_API)


def _is_private(module_name: str) -> bool:
    return any(part.startswith("_") for part in module_name.split("."))


def _module_level(statements: list[ast.stmt]) -> list[ast.stmt]:
    """A module's top-level statements, those inside top-level ``if`` and ``try`` included."""
    found: list[ast.stmt] = []
    for statement in statements:
        found.append(statement)
        if isinstance(statement, ast.If):
            found += _module_level(statement.body) + _module_level(statement.orelse)
        elif isinstance(statement, ast.Try):
            for block in (statement.body, statement.orelse, statement.finalbody):
                found += _module_level(block)
            for handler in statement.handlers:
                found += _module_level(handler.body)
    return found


def _tools(module: ModuleType) -> set[str]:
    """Names the module binds by importing from outside mpstate (``typing``, ``contextlib``,
    a dependency): what it uses, not what it offers."""
    names: set[str] = set()
    for statement in _module_level(ast.parse(inspect.getsource(module)).body):
        if (
            isinstance(statement, ast.ImportFrom)
            and statement.level == 0
            and (statement.module or "").partition(".")[0] != "mpstate"
        ):
            names.update(alias.asname or alias.name for alias in statement.names)
    return names


def _public_names(module: ModuleType) -> set[str]:
    """What ``from module import *`` would offer without ``__all__``, less imported tools:
    every name it defines or imports from mpstate, not starting with ``_``, except submodules."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    } - _tools(module)


def _all_modules() -> list[tuple[ModuleType, bool]]:
    """Every module of the package (imported), with whether it is a package."""
    found = [(mpstate, True)]
    for info in pkgutil.walk_packages(mpstate.__path__, "mpstate."):
        found.append((importlib.import_module(info.name), info.ispkg))
    return found


@cache
def _docs_text() -> str:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return "\n".join(page.read_text(encoding="utf-8") for page in pages)


@cache
def _griffe_package() -> Any:
    """The package as mkdocstrings sees it (griffe reads the source, as ``make docs`` does)."""
    return griffe.load("mpstate", search_paths=[str(ROOT)], resolve_aliases=True)


def _rendered_in_the_api_reference(package: str, name: str) -> bool:
    """Whether mkdocstrings renders ``name`` under ``::: package``: a member in ``__all__`` with a
    docstring (``show_if_no_docstring`` is off)."""
    module = _griffe_package()
    for part in package.split(".")[1:]:
        module = module[part]
    member = module.members.get(name)
    if member is None:  # loaded on first use by the package's __getattr__
        return False
    target = member.final_target if member.is_alias else member
    return bool(target.is_public and target.has_docstrings)


def _named_in_the_docs(name: str) -> bool:
    return re.search(rf"`[^`\n]*\b{re.escape(name)}\b[^`\n]*`", _docs_text()) is not None


# -- the pinned lists ---------------------------------------------------------------------------


@pytest.mark.parametrize("package", PACKAGES)
def test_a_public_package_exports_exactly_the_names_pinned_here(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__all__ == PUBLIC_API[package]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_imports(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, name  # a lazy name loads on first use


@pytest.mark.parametrize("package", PACKAGES)
def test_no_public_name_of_a_public_package_is_left_out_of_all(package: str) -> None:
    module = importlib.import_module(package)
    assert _public_names(module) - set(module.__all__) == set()


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_is_documented(package: str) -> None:
    api_page = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert re.search(rf"^::: {re.escape(package)}$", api_page, re.MULTILINE), (
        f"docs/api.md renders no '::: {package}' section"
    )
    undocumented = [
        name
        for name in importlib.import_module(package).__all__
        if not _rendered_in_the_api_reference(package, name) and not _named_in_the_docs(name)
    ]
    assert undocumented == [], f"give these a docstring or name them on a docs page: {undocumented}"


# -- no re-exported helpers ---------------------------------------------------------------------


def test_a_module_exports_no_function_it_does_not_own() -> None:
    """A function in ``__all__`` is the module's own, or a package's re-export of a public one."""
    borrowed = []
    for module, is_package in _all_modules():
        for name in getattr(module, "__all__", ()):
            value = getattr(module, name)
            home = getattr(value, "__module__", None)
            if not isinstance(value, FunctionType) or home == module.__name__:
                continue
            if not isinstance(home, str) or home.partition(".")[0] != "mpstate":
                continue  # built with a dependency's factory (a click option), not imported
            public_at_home = name in getattr(importlib.import_module(home), "__all__", ())
            if not (is_package and public_at_home and not _is_private(home)):
                borrowed.append(f"{module.__name__}.{name} (from {home})")
    assert borrowed == []


def test_a_private_module_is_re_exported_only_by_its_own_package() -> None:
    leaked = []
    for module, _ in _all_modules():
        for name in getattr(module, "__all__", ()):
            home = getattr(getattr(module, name), "__module__", None)
            if (
                isinstance(home, str)
                and home != module.__name__
                and home.partition(".")[0] == "mpstate"
                and _is_private(home)
                and home.rpartition(".")[0] != module.__name__
            ):
                leaked.append(f"{module.__name__}.{name} (from {home})")
    assert leaked == []


def test_argument_checks_are_private() -> None:
    import mpstate.core  # noqa: PLC0415 - the modules that re-exported them before
    import mpstate.store  # noqa: PLC0415

    checks = {"check_id", "check_int", "check_positive"}
    for module in (mpstate, mpstate.store, mpstate.core):
        assert checks.isdisjoint(module.__all__), module.__name__


# -- the error hierarchy and the asyncio stores -------------------------------------------------


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


def test_the_asyncio_stores_share_the_store_contract_base() -> None:
    import mpstate.aio  # noqa: PLC0415 - the asyncio stores, imported on purpose here

    assert issubclass(mpstate.aio.AsyncRedisPipelineStateStore, mpstate.aio.AsyncPipelineStateStore)
