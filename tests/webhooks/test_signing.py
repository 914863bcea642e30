"""Signing provider callbacks: HMAC-SHA256 over ``"{timestamp}." + body`` with a replay window.

Pure functions, so every case runs on a fixed clock (``now=``): the signature covers the body
and the timestamp exactly, a timestamp outside the window is refused either way, several offered
signatures and several configured secrets (rotation) are accepted, and ``parse_secrets`` reads
the environment form or says which entry is malformed.
"""

from __future__ import annotations

import hashlib
import hmac

import httpx
import pytest

from mpstate import InvalidInputError, WebhookSignatureError
from mpstate.webhooks import (
    DEFAULT_TOLERANCE_S,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    parse_secrets,
    sign,
    signed_headers,
    verify,
)

SECRET = "whsec-current"
OLD_SECRET = "whsec-previous"
NOW = 1_732_406_400
BODY = b'{"jobId": "job-1", "status": "succeeded"}'


def headers_for(secret: str = SECRET, body: bytes = BODY, timestamp: int = NOW) -> dict[str, str]:
    return signed_headers(secret, body, timestamp=timestamp)


# -- signing and verifying -------------------------------------------------------------------------


def test_a_signature_is_hmac_sha256_of_the_timestamp_a_dot_and_the_body() -> None:
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()

    assert sign(SECRET, NOW, BODY) == f"v1={expected}"
    assert headers_for() == {TIMESTAMP_HEADER: str(NOW), SIGNATURE_HEADER: f"v1={expected}"}


def test_signed_headers_use_the_current_time_when_no_timestamp_is_given() -> None:
    headers = signed_headers(SECRET, BODY)

    assert verify(SECRET, headers, BODY) == int(headers[TIMESTAMP_HEADER])


def test_a_signed_callback_verifies_and_returns_its_timestamp() -> None:
    assert verify(SECRET, headers_for(), BODY, now=NOW) == NOW


def test_a_callback_signed_with_another_secret_is_refused() -> None:
    with pytest.raises(WebhookSignatureError, match="signature does not match"):
        verify(SECRET, headers_for(secret="someone-else"), BODY, now=NOW)


def test_a_changed_body_is_refused() -> None:
    headers = headers_for()

    with pytest.raises(WebhookSignatureError, match="signature does not match"):
        verify(SECRET, headers, BODY.replace(b"succeeded", b"failed"), now=NOW)
    with pytest.raises(WebhookSignatureError, match="signature does not match"):
        verify(SECRET, headers, BODY + b" ", now=NOW)


def test_a_changed_timestamp_is_refused_even_inside_the_window() -> None:
    headers = {**headers_for(), TIMESTAMP_HEADER: str(NOW + 1)}

    with pytest.raises(WebhookSignatureError, match="signature does not match"):
        verify(SECRET, headers, BODY, now=NOW)


@pytest.mark.parametrize("offset", [-1, 1], ids=["in the past", "in the future"])
def test_a_timestamp_outside_the_tolerance_is_refused_in_either_direction(offset: int) -> None:
    headers = headers_for()
    edge = NOW - offset * 30

    # Exactly at the edge of the window is still accepted; one second past it is not.
    assert verify(SECRET, headers, BODY, tolerance_s=30, now=edge) == NOW
    with pytest.raises(WebhookSignatureError, match="replay window"):
        verify(SECRET, headers, BODY, tolerance_s=30, now=edge - offset)


def test_the_default_window_is_five_minutes() -> None:
    headers = headers_for()

    assert DEFAULT_TOLERANCE_S == 300
    assert verify(SECRET, headers, BODY, now=NOW + 300) == NOW
    with pytest.raises(WebhookSignatureError, match="replay window"):
        verify(SECRET, headers, BODY, now=NOW + 301)


def test_a_nan_tolerance_does_not_turn_the_replay_window_off() -> None:
    stale = headers_for(timestamp=NOW - 10 * 365 * 86400)

    with pytest.raises(WebhookSignatureError):
        verify(SECRET, stale, BODY, tolerance_s=float("nan"), now=NOW)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {TIMESTAMP_HEADER: str(NOW)},
        {SIGNATURE_HEADER: sign(SECRET, NOW, BODY)},
        {TIMESTAMP_HEADER: "", SIGNATURE_HEADER: sign(SECRET, NOW, BODY)},
        {TIMESTAMP_HEADER: str(NOW), SIGNATURE_HEADER: ""},
    ],
    ids=["none", "no signature", "no timestamp", "empty timestamp", "empty signature"],
)
def test_a_callback_without_both_headers_is_refused(headers: dict[str, str]) -> None:
    with pytest.raises(WebhookSignatureError, match="missing"):
        verify(SECRET, headers, BODY, now=NOW)


@pytest.mark.parametrize(
    "timestamp",
    [
        "soon",
        "-1732406400",
        "+1732406400",
        "1732406400.0",
        "1e9",
        " 1732406400",
        "١٧٣٢٤٠٦٤٠٠",
        "0" * 13,
    ],
    ids=["word", "negative", "plus", "float", "exponent", "space", "arabic", "13 digits"],
)
def test_a_timestamp_that_is_not_unix_seconds_is_refused(timestamp: str) -> None:
    headers = {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: sign(SECRET, NOW, BODY)}

    with pytest.raises(WebhookSignatureError, match="unix seconds"):
        verify(SECRET, headers, BODY, now=NOW)


def test_one_valid_signature_among_several_offered_is_enough() -> None:
    valid = sign(SECRET, NOW, BODY)
    offered = f"v1={'0' * 64}, {sign('other', NOW, BODY)},{valid}"

    assert verify(SECRET, {TIMESTAMP_HEADER: str(NOW), SIGNATURE_HEADER: offered}, BODY, now=NOW)


@pytest.mark.parametrize(
    "signature",
    [
        f"v1={'0' * 64}, v1={'f' * 64}",
        "v2=" + sign(SECRET, NOW, BODY)[3:],
        sign(SECRET, NOW, BODY)[3:],
        sign(SECRET, NOW, BODY).upper(),
        "v1=é" + sign(SECRET, NOW, BODY)[4:],
    ],
    ids=["only wrong values", "other scheme", "no scheme", "upper case", "not ascii"],
)
def test_a_signature_header_without_a_matching_v1_value_is_refused(signature: str) -> None:
    headers = {TIMESTAMP_HEADER: str(NOW), SIGNATURE_HEADER: signature}

    with pytest.raises(WebhookSignatureError, match="signature does not match"):
        verify(SECRET, headers, BODY, now=NOW)


def test_during_a_rotation_either_secret_verifies() -> None:
    secrets = [SECRET, OLD_SECRET]

    assert verify(secrets, headers_for(SECRET), BODY, now=NOW) == NOW
    assert verify(secrets, headers_for(OLD_SECRET), BODY, now=NOW) == NOW
    assert verify((OLD_SECRET,), headers_for(OLD_SECRET), BODY, now=NOW) == NOW
    with pytest.raises(WebhookSignatureError, match="signature does not match"):
        verify(secrets, headers_for("retired-long-ago"), BODY, now=NOW)


@pytest.mark.parametrize("secrets", ["", [], [""], [SECRET, ""]], ids=repr)
def test_without_a_configured_secret_every_callback_is_refused(secrets: str | list[str]) -> None:
    # Not even one signed with an empty key, which anyone could compute.
    headers = headers_for(secret="")

    with pytest.raises(WebhookSignatureError, match="no signing secret"):
        verify(secrets, headers, BODY, now=NOW)


def test_header_names_are_case_insensitive_in_a_case_insensitive_mapping() -> None:
    lower = {name.lower(): value for name, value in headers_for().items()}

    assert verify(SECRET, httpx.Headers(lower), BODY, now=NOW) == NOW
    # A plain dict is looked up with the documented spelling only.
    with pytest.raises(WebhookSignatureError, match="missing"):
        verify(SECRET, lower, BODY, now=NOW)


def test_the_refusal_never_names_a_secret() -> None:
    with pytest.raises(WebhookSignatureError) as refused:
        verify([SECRET, OLD_SECRET], headers_for("wrong"), BODY, now=NOW)

    assert SECRET not in str(refused.value)
    assert OLD_SECRET not in str(refused.value)


# -- parse_secrets ---------------------------------------------------------------------------------


def test_parse_secrets_groups_the_secrets_of_each_provider_in_order() -> None:
    assert parse_secrets("video=a,video=b,img=c") == {"video": ["a", "b"], "img": ["c"]}


def test_parse_secrets_ignores_whitespace_around_entries_and_empty_entries() -> None:
    assert parse_secrets("  video=a ,\n img=c,, ") == {"video": ["a"], "img": ["c"]}
    assert parse_secrets(" video =a") == {"video": ["a"]}
    assert parse_secrets("") == {}


def test_parse_secrets_keeps_an_equals_sign_inside_a_secret() -> None:
    assert parse_secrets("video=YWJj==,img=k=v") == {"video": ["YWJj=="], "img": ["k=v"]}


@pytest.mark.parametrize(
    "spec",
    ["video", "video=a,img", "=secret", " =secret", "video=", "video=a,img="],
    ids=[
        "no equals",
        "second entry without equals",
        "no provider",
        "blank provider",
        "no secret",
        "second entry without secret",
    ],
)
def test_parse_secrets_refuses_a_malformed_entry(spec: str) -> None:
    with pytest.raises(InvalidInputError, match="is not provider=secret"):
        parse_secrets(spec)


def test_parse_secrets_names_the_malformed_entry_by_its_position_never_its_text() -> None:
    with pytest.raises(InvalidInputError) as refused:
        parse_secrets("video=a,img=")
    assert "entry 2" in str(refused.value)

    # An entry without "=" may be a secret pasted without its provider: it is never echoed.
    for spec in ("video=a,=kept-private", "video=a,kept-private"):
        with pytest.raises(InvalidInputError) as refused:
            parse_secrets(spec)
        assert "kept-private" not in str(refused.value)


def test_parse_secrets_refuses_a_provider_name_no_id_can_hold() -> None:
    with pytest.raises(InvalidInputError, match="provider"):
        parse_secrets(f"{'p' * 5000}=secret")
