"""The module pytest loads from mpstate's ``pytest11`` entry point: an opt-in switch, no fixtures.

Installing mpstate must not put fixtures into every pytest session of the environment (Celery
learned this: its plugin, once loaded for everyone, now ships disabled and is enabled with
``pytest_plugins = ("celery.contrib.pytest",)``). So this module only adds the ``mpstate_plugin``
ini option; the fixtures live in ``mpstate.testing.plugin``, registered when the project asks:

- ``mpstate_plugin = true`` in ``[tool.pytest.ini_options]`` (or ``pytest -o mpstate_plugin=true``);
- ``pytest -p mpstate.testing.plugin``, or ``addopts = "-p mpstate.testing.plugin"``;
- ``pytest_plugins = ["mpstate.testing.plugin"]`` in the root conftest.py.

``pytest -p no:mpstate`` removes even this switch. Imports nothing but pytest.
"""

from __future__ import annotations

import pytest

__all__ = ["PLUGIN", "pytest_addoption", "pytest_configure"]

#: The module holding the fixtures.
PLUGIN = "mpstate.testing.plugin"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "mpstate_plugin",
        type="bool",
        default=False,
        help=f"enable mpstate's fixtures ({PLUGIN}): stores, MpState with a worker thread",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getini("mpstate_plugin"):
        # A no-op when -p or pytest_plugins registered it already, or -p no:<it> blocked it.
        config.pluginmanager.import_plugin(PLUGIN)
