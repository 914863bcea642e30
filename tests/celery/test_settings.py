"""``CelerySettings``: ``app.conf.mpstate_*`` read once, checked, and typos refused."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from celery import Celery

from mpstate import InMemoryPipelineStateStore, InvalidInputError
from mpstate.celery import CelerySettings, MpState


def test_defaults_when_nothing_is_configured() -> None:
    settings = CelerySettings.from_conf({"broker_url": "memory://", "mpstate_store_url": None})
    assert settings == CelerySettings()
    assert settings.outage_window_s == 60.0
    assert settings.store_url is None
    assert settings.publish_retry_policy["max_retries"] == 30


def test_every_key_is_read_and_normalized() -> None:
    settings = CelerySettings.from_conf(
        {
            "mpstate_store_url": "redis://localhost/1",
            "mpstate_outage_window_s": 5,
            "mpstate_webhook_retry_interval_s": "0.5",  # as a config from the environment has it
            "mpstate_webhook_unknown_window_s": 30.0,
            "mpstate_publish_retry_policy": {"max_retries": 1, "interval_start": 0.2},
        }
    )
    assert settings.store_url == "redis://localhost/1"
    assert settings.outage_window_s == 5.0
    assert isinstance(settings.outage_window_s, float)
    assert settings.webhook_retry_interval_s == 0.5
    assert settings.webhook_unknown_window_s == 30.0
    assert dict(settings.publish_retry_policy) == {"max_retries": 1, "interval_start": 0.2}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("mpstate_outage_window_s", 0),
        ("mpstate_outage_window_s", -1),
        ("mpstate_outage_window_s", float("nan")),
        ("mpstate_outage_window_s", float("inf")),
        ("mpstate_outage_window_s", True),
        ("mpstate_webhook_retry_interval_s", "soon"),
        ("mpstate_webhook_unknown_window_s", [300]),
        ("mpstate_store_url", ""),
        ("mpstate_store_url", 6379),
        ("mpstate_publish_retry_policy", [("max_retries", 3)]),
        ("mpstate_publish_retry_policy", {"max_retries": -1}),
        ("mpstate_publish_retry_policy", {"max_retries": 2.5}),
        ("mpstate_publish_retry_policy", {"interval_max": "2"}),
        ("mpstate_publish_retry_policy", {"interval_mx": 2}),
    ],
)
def test_a_bad_value_is_refused_naming_its_key(key: str, value: Any) -> None:
    with pytest.raises(InvalidInputError, match=key):
        CelerySettings.from_conf({key: value})


@pytest.mark.parametrize("key", ["mpstate_outage_window", "MPSTATE_OUTAGE_WINDOW_S"])
def test_an_unknown_mpstate_key_is_refused_rather_than_ignored(key: str) -> None:
    with pytest.raises(InvalidInputError, match=key) as raised:
        CelerySettings.from_conf({key: 5, "mpstate_outage_window_s": 5})
    assert "mpstate_outage_window_s" in str(raised.value)  # and the known ones are listed


def test_settings_are_frozen() -> None:
    settings = CelerySettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.outage_window_s = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.publish_retry_policy["max_retries"] = 1  # type: ignore[index]


def _app(**conf: Any) -> Celery:
    app = Celery("settings-test", broker="memory://", set_as_current=False)
    app.conf.update(**conf)
    return app


def test_mpstate_reads_its_settings_from_app_conf_once() -> None:
    app = _app(mpstate_outage_window_s=7, mpstate_webhook_unknown_window_s=9)
    mp = MpState(app, InMemoryPipelineStateStore())
    try:
        assert mp.settings.outage_window_s == 7.0
        assert mp.lifecycle.outage_window_s == 7.0
        assert mp.webhook_unknown_window_s == 9.0
        assert mp.webhook_retry_interval_s == CelerySettings().webhook_retry_interval_s
        assert mp.publish_retry_policy == dict(CelerySettings().publish_retry_policy)
    finally:
        mp.close()
        app.close()


def test_mpstate_refuses_a_misspelled_setting_before_binding() -> None:
    app = _app(mpstate_outage_windows_s=7)
    with pytest.raises(InvalidInputError, match="mpstate_outage_windows_s"):
        MpState(app, InMemoryPipelineStateStore())
    with pytest.raises(InvalidInputError, match="mpstate_store_url"):
        MpState(_app())  # no store and no URL: nothing was bound by the failed attempt above
    app.close()
