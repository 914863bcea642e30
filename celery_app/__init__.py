"""The example application: a product-photo pipeline on Celery, with its state in mpstate.

``celery -A celery_app worker -E`` finds ``celery_app.app``, built from the environment
(``celery_app.settings``) on first use. ``make demo`` runs everything in one process instead
(``celery_app.demo``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["app"]

_app: Any = None


def __getattr__(name: str) -> Any:
    # Built lazily: importing the package (the demo, the tests) must not connect anywhere.
    global _app  # noqa: PLW0603 - one app per process, built on first use
    if name == "app":
        if _app is None:
            from celery_app.application import create_app  # noqa: PLC0415
            from celery_app.settings import Settings  # noqa: PLC0415

            _app = create_app(Settings.from_env())
        return _app
    raise AttributeError(f"module 'celery_app' has no attribute {name!r}")
