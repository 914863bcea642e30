"""Signature schemes of real providers, on a fixed clock and against published test vectors.

Standard Webhooks is checked against the spec's own vector; the ``t=,v1=`` family against HMACs
computed here independently (and mpstate's preset against ``signing.py`` both ways); fal against
Ed25519 keys made here and served as a JWKS over real HTTP on loopback, counting every fetch;
capability tokens as pure functions. Every verifier must refuse malformed input with
``WebhookSignatureError`` and nothing else, which a property test drives with arbitrary headers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from mpstate import InvalidInputError, WebhookSignatureError
from mpstate.webhooks import signing
from mpstate.webhooks.schemes import (
    SCHEME_NAMES,
    HexHmacScheme,
    SignatureScheme,
    StandardWebhooksScheme,
    Verified,
    callback_path,
    callback_token,
    check_callback_token,
    elevenlabs_scheme,
    mpstate_scheme,
    scheme_for,
    stripe_scheme,
)
from mpstate.webhooks.schemes.fal import (
    FalScheme,
    JwksKeySet,
    JwksUnavailableError,
    ed25519_jwk,
    fal_signed_headers,
)

BODY = b'{"jobId": "job-1", "status": "succeeded"}'

# -- Standard Webhooks -----------------------------------------------------------------------------

# The spec's test vector, from standard-webhooks/standard-webhooks
# libraries/python/tests/test_webhooks.py (test_sign_function; the same values appear in the
# svix-webhooks libraries' tests, e.g. go/webhook_test.go TestWebhookSign).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_PAYLOAD = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
# The same file's test_invalid_signature_raises_error and test_multi_sig_payload_is_valid.
VECTOR_WRONG_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="
VECTOR_OTHER_SIGNATURE = "Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="

SW_SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
SW_OLD_SECRET = "whsec_" + base64.b64encode(b"o" * 32).decode()
NOW = 1_732_406_400


def vector_headers(signature: str = VECTOR_SIGNATURE) -> dict[str, str]:
    return {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TS),
        "webhook-signature": signature,
    }


def sw_headers(
    secrets: str | list[str] = SW_SECRET, *, ts: int = NOW, body: bytes = BODY
) -> dict[str, str]:
    return StandardWebhooksScheme(secrets).sign("msg_1", body, timestamp=ts)


def test_the_spec_test_vector_verifies_and_names_its_message_id_as_the_delivery_id() -> None:
    verified = StandardWebhooksScheme(VECTOR_SECRET).verify(
        vector_headers(), VECTOR_PAYLOAD, now=VECTOR_TS
    )

    assert verified == Verified(delivery_id=VECTOR_ID, timestamp=VECTOR_TS)


def test_signing_reproduces_the_spec_test_vector() -> None:
    headers = StandardWebhooksScheme(VECTOR_SECRET).sign(
        VECTOR_ID, VECTOR_PAYLOAD, timestamp=VECTOR_TS
    )

    assert headers == vector_headers()


def test_the_spec_vector_verifies_with_the_secret_given_without_its_prefix() -> None:
    scheme = StandardWebhooksScheme(VECTOR_SECRET.removeprefix("whsec_"))

    assert scheme.verify(vector_headers(), VECTOR_PAYLOAD, now=VECTOR_TS).delivery_id == VECTOR_ID


def test_the_spec_vector_with_its_last_signature_character_changed_is_refused() -> None:
    with pytest.raises(WebhookSignatureError, match="signature does not match"):
        StandardWebhooksScheme(VECTOR_SECRET).verify(
            vector_headers(VECTOR_WRONG_SIGNATURE), VECTOR_PAYLOAD, now=VECTOR_TS
        )


def test_one_matching_signature_among_several_and_other_versions_is_enough() -> None:
    offered = " ".join(
        [
            f"v1,{VECTOR_OTHER_SIGNATURE}",
            f"v2,{VECTOR_OTHER_SIGNATURE}",
            VECTOR_SIGNATURE,
            f"v1a,{VECTOR_OTHER_SIGNATURE}",
        ]
    )

    scheme = StandardWebhooksScheme(VECTOR_SECRET)
    assert scheme.verify(vector_headers(offered), VECTOR_PAYLOAD, now=VECTOR_TS).timestamp


def test_the_signature_is_hmac_sha256_of_id_timestamp_and_body_keyed_with_the_decoded_secret() -> (
    None
):
    key = base64.b64decode(SW_SECRET.removeprefix("whsec_"))
    mac = hmac.new(key, f"msg_1.{NOW}.".encode() + BODY, hashlib.sha256).digest()

    assert sw_headers()["webhook-signature"] == "v1," + base64.b64encode(mac).decode()


def test_a_signed_callback_round_trips_and_a_replay_verifies_again() -> None:
    scheme = StandardWebhooksScheme(SW_SECRET)
    headers = sw_headers()

    first = scheme.verify(headers, BODY, now=NOW)
    # Schemes are stateless: the receiver drops the second delivery by its delivery id.
    assert scheme.verify(headers, BODY, now=NOW + 10) == first
    assert first.delivery_id == "msg_1"


def test_the_svix_header_names_are_accepted_as_well() -> None:
    svix = {name.replace("webhook-", "svix-"): value for name, value in sw_headers().items()}

    assert StandardWebhooksScheme(SW_SECRET).verify(svix, BODY, now=NOW).delivery_id == "msg_1"


def test_header_names_are_found_whatever_their_case_even_in_a_plain_dict() -> None:
    shouted = {name.upper(): value for name, value in sw_headers().items()}

    assert StandardWebhooksScheme(SW_SECRET).verify(shouted, BODY, now=NOW).timestamp == NOW
    assert StandardWebhooksScheme(SW_SECRET).verify(httpx.Headers(shouted), BODY, now=NOW)


def test_during_a_receiver_side_rotation_either_secret_verifies() -> None:
    both = StandardWebhooksScheme([SW_SECRET, SW_OLD_SECRET])

    assert both.verify(sw_headers(SW_OLD_SECRET), BODY, now=NOW)
    assert both.verify(sw_headers(SW_SECRET), BODY, now=NOW)
    with pytest.raises(WebhookSignatureError, match="signature does not match"):
        StandardWebhooksScheme(SW_SECRET).verify(sw_headers(SW_OLD_SECRET), BODY, now=NOW)


def test_a_sender_signing_with_old_and_new_secret_verifies_with_only_the_new_one() -> None:
    headers = sw_headers([SW_OLD_SECRET, SW_SECRET])

    assert len(headers["webhook-signature"].split(" ")) == 2
    assert StandardWebhooksScheme(SW_SECRET).verify(headers, BODY, now=NOW)


@pytest.mark.parametrize("offset", [-1, 1], ids=["stale", "future"])
def test_a_timestamp_past_the_five_minute_window_is_refused_either_way(offset: int) -> None:
    scheme = StandardWebhooksScheme(SW_SECRET)
    headers = sw_headers()

    assert scheme.verify(headers, BODY, now=NOW - offset * 300)
    with pytest.raises(WebhookSignatureError, match="replay window"):
        scheme.verify(headers, BODY, now=NOW - offset * 301)


def test_the_tolerance_is_configurable() -> None:
    scheme = StandardWebhooksScheme(SW_SECRET, tolerance_s=30)

    assert scheme.verify(sw_headers(), BODY, now=NOW + 30)
    with pytest.raises(WebhookSignatureError, match="replay window"):
        scheme.verify(sw_headers(), BODY, now=NOW + 31)


def test_a_changed_body_id_or_timestamp_is_refused() -> None:
    scheme = StandardWebhooksScheme(SW_SECRET)
    headers = sw_headers()

    for changed_headers, body in [
        (headers, BODY + b" "),
        ({**headers, "webhook-id": "msg_2"}, BODY),
        ({**headers, "webhook-timestamp": str(NOW + 1)}, BODY),
    ]:
        with pytest.raises(WebhookSignatureError, match="signature does not match"):
            scheme.verify(changed_headers, body, now=NOW)


@pytest.mark.parametrize(
    "drop", ["webhook-id", "webhook-timestamp", "webhook-signature"], ids=lambda n: f"no {n}"
)
def test_a_callback_missing_any_of_the_three_headers_is_refused(drop: str) -> None:
    headers = {k: v for k, v in sw_headers().items() if k != drop}

    with pytest.raises(WebhookSignatureError, match="missing"):
        StandardWebhooksScheme(SW_SECRET).verify(headers, BODY, now=NOW)


def test_webhook_and_svix_headers_are_not_mixed() -> None:
    headers = sw_headers()
    mixed = {"webhook-id": "msg_1", "webhook-timestamp": str(NOW)}
    mixed["svix-signature"] = headers["webhook-signature"]

    with pytest.raises(WebhookSignatureError, match="missing"):
        StandardWebhooksScheme(SW_SECRET).verify(mixed, BODY, now=NOW)


@pytest.mark.parametrize(
    "signature",
    [
        "v1,not base64!",
        "v1,",
        "v1",
        "v1a,AAAA",
        "v1,AAAA",
        "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    ],
    ids=["bad base64", "empty", "no comma", "only v1a", "short digest", "no version"],
)
def test_a_signature_header_without_a_usable_v1_value_is_refused(signature: str) -> None:
    with pytest.raises(WebhookSignatureError, match="no v1 signature"):
        StandardWebhooksScheme(VECTOR_SECRET).verify(
            vector_headers(signature), VECTOR_PAYLOAD, now=VECTOR_TS
        )


def test_an_id_containing_a_dot_is_refused_even_when_correctly_signed() -> None:
    # The spec forbids '.' in ids: "{id}.{ts}.{body}" must split one way only.
    key = base64.b64decode(SW_SECRET.removeprefix("whsec_"))
    mac = hmac.new(key, f"msg.1.{NOW}.".encode() + BODY, hashlib.sha256).digest()
    headers = {
        "webhook-id": "msg.1",
        "webhook-timestamp": str(NOW),
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
    }

    with pytest.raises(WebhookSignatureError, match=r"without '\.'"):
        StandardWebhooksScheme(SW_SECRET).verify(headers, BODY, now=NOW)
    with pytest.raises(InvalidInputError, match=r"without '\.'"):
        StandardWebhooksScheme(SW_SECRET).sign("msg.1", BODY, timestamp=NOW)


@pytest.mark.parametrize("version", ["v1a", "v2", "V1"])
def test_the_right_hmac_under_another_version_tag_is_not_a_v1_signature(version: str) -> None:
    offered = VECTOR_SIGNATURE.replace("v1,", f"{version},")

    with pytest.raises(WebhookSignatureError, match="no v1 signature"):
        StandardWebhooksScheme(VECTOR_SECRET).verify(
            vector_headers(offered), VECTOR_PAYLOAD, now=VECTOR_TS
        )


@pytest.mark.parametrize(
    "changes",
    [
        {"webhook-timestamp": "1614265330.0"},
        {"webhook-timestamp": "-1614265330"},
        {"webhook-timestamp": "NaN"},
        {"webhook-timestamp": "9" * 30},
        {"webhook-id": "msg.1"},
        {"webhook-id": "msg\n1"},
        {"webhook-id": "m" * 257},
        {"webhook-signature": "v1," + "A" * 5000},
        {"webhook-signature": "v1,é"},
    ],
    ids=[
        "fractional ts",
        "negative ts",
        "nan ts",
        "huge ts",
        "dot in id",
        "newline in id",
        "long id",
        "huge header",
        "non-ascii",
    ],
)
def test_malformed_headers_are_refused_as_a_signature_error(changes: dict[str, str]) -> None:
    with pytest.raises(WebhookSignatureError):
        StandardWebhooksScheme(VECTOR_SECRET).verify(
            {**vector_headers(), **changes}, VECTOR_PAYLOAD, now=VECTOR_TS
        )


@pytest.mark.parametrize(
    "secrets", ["", [], ["whsec_"], ["whsec_not*base64"], [VECTOR_SECRET, 42]], ids=repr
)
def test_a_missing_or_malformed_standard_webhooks_secret_is_a_configuration_error(
    secrets: Any,
) -> None:
    with pytest.raises(InvalidInputError) as refused:
        StandardWebhooksScheme(secrets)
    assert "not*base64" not in str(refused.value)


# -- the t=,v1= family -----------------------------------------------------------------------------

STRIPE_SECRET = "whsec_test_secret_used_as_raw_bytes"


def hex_hmac(secret: str, ts: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()


def test_a_stripe_signature_is_hex_hmac_of_t_dot_body_keyed_with_the_raw_secret() -> None:
    headers = stripe_scheme(STRIPE_SECRET).sign(BODY, timestamp=NOW)

    assert headers == {"Stripe-Signature": f"t={NOW},v1={hex_hmac(STRIPE_SECRET, NOW, BODY)}"}
    assert stripe_scheme(STRIPE_SECRET).verify(headers, BODY, now=NOW) == Verified(None, NOW)


def test_a_stripe_header_with_v0_and_several_v1_values_verifies_when_one_matches() -> None:
    good = hex_hmac(STRIPE_SECRET, NOW, BODY)
    header = f"t={NOW},v1={'0' * 64},v0={good},v1={good},scheme=extra"

    assert stripe_scheme(STRIPE_SECRET).verify({"stripe-signature": header}, BODY, now=NOW)


def test_a_stripe_header_with_only_a_v0_value_is_refused() -> None:
    header = f"t={NOW},v0={hex_hmac(STRIPE_SECRET, NOW, BODY)}"

    with pytest.raises(WebhookSignatureError, match="no v1 signature"):
        stripe_scheme(STRIPE_SECRET).verify({"Stripe-Signature": header}, BODY, now=NOW)


def test_a_stripe_header_naming_two_timestamps_is_refused() -> None:
    header = f"t={NOW},t={NOW + 1},v1={hex_hmac(STRIPE_SECRET, NOW, BODY)}"

    with pytest.raises(WebhookSignatureError, match="several timestamps"):
        stripe_scheme(STRIPE_SECRET).verify({"Stripe-Signature": header}, BODY, now=NOW)


@pytest.mark.parametrize(
    "header",
    ["", "v1=abc", f"t={NOW}", "t=,v1=abc"],
    ids=["empty", "no t", "no signature", "empty t"],
)
def test_a_stripe_header_missing_its_timestamp_or_signature_is_refused(header: str) -> None:
    with pytest.raises(WebhookSignatureError, match=r"missing|no v1"):
        stripe_scheme(STRIPE_SECRET).verify({"Stripe-Signature": header}, BODY, now=NOW)


def test_stripes_window_is_five_minutes_either_way() -> None:
    headers = stripe_scheme(STRIPE_SECRET).sign(BODY, timestamp=NOW)

    assert stripe_scheme(STRIPE_SECRET).verify(headers, BODY, now=NOW + 300)
    for now in (NOW + 301, NOW - 301):
        with pytest.raises(WebhookSignatureError, match="replay window"):
            stripe_scheme(STRIPE_SECRET).verify(headers, BODY, now=now)


def test_elevenlabs_signs_with_v0_and_allows_thirty_minutes() -> None:
    secret = "wsec_elevenlabs"
    headers = elevenlabs_scheme(secret).sign(BODY, timestamp=NOW)

    assert headers == {"ElevenLabs-Signature": f"t={NOW},v0={hex_hmac(secret, NOW, BODY)}"}
    assert elevenlabs_scheme(secret).verify(headers, BODY, now=NOW + 1800).timestamp == NOW
    with pytest.raises(WebhookSignatureError, match="replay window"):
        elevenlabs_scheme(secret).verify(headers, BODY, now=NOW + 1801)
    v1 = {"ElevenLabs-Signature": f"t={NOW},v1={hex_hmac(secret, NOW, BODY)}"}
    with pytest.raises(WebhookSignatureError, match="no v0 signature"):
        elevenlabs_scheme(secret).verify(v1, BODY, now=NOW)


def test_the_mpstate_preset_verifies_what_signing_signed_headers_produces() -> None:
    headers = signing.signed_headers("s3cret", BODY, timestamp=NOW)

    assert mpstate_scheme("s3cret").verify(headers, BODY, now=NOW) == Verified(None, NOW)


def test_the_mpstate_preset_signs_exactly_the_headers_signing_produces() -> None:
    headers = mpstate_scheme("s3cret").sign(BODY, timestamp=NOW)

    assert headers == signing.signed_headers("s3cret", BODY, timestamp=NOW)
    assert list(headers) == [signing.TIMESTAMP_HEADER, signing.SIGNATURE_HEADER]
    assert signing.verify("s3cret", headers, BODY, now=NOW) == NOW


def test_the_mpstate_preset_and_signing_verify_agree_on_rotation_and_refusal() -> None:
    rotated = mpstate_scheme(["new-secret", "old-secret"]).sign(BODY, timestamp=NOW)

    # A sender mid-rotation offers two v1 values; both verifiers accept either secret.
    assert signing.verify("old-secret", rotated, BODY, now=NOW) == NOW
    assert mpstate_scheme("new-secret").verify(rotated, BODY, now=NOW).timestamp == NOW
    forged = signing.signed_headers("other", BODY, timestamp=NOW)
    with pytest.raises(WebhookSignatureError, match="signature does not match"):
        mpstate_scheme(["new-secret", "old-secret"]).verify(forged, BODY, now=NOW)
    with pytest.raises(WebhookSignatureError, match="replay window"):
        mpstate_scheme("other").verify(forged, BODY, now=NOW + 301)


@pytest.mark.parametrize(
    "timestamp",
    ["soon", "-1732406400", "+1732406400", "1732406400.0", "1e9", " 1", "١٧٣٢٤٠٦٤٠٠", "0" * 13],
)
def test_the_family_refuses_a_timestamp_that_is_not_unix_seconds(timestamp: str) -> None:
    headers = {**signing.signed_headers("s3cret", BODY, timestamp=NOW)}
    headers[signing.TIMESTAMP_HEADER] = timestamp

    with pytest.raises(WebhookSignatureError, match=r"unix seconds|malformed"):
        mpstate_scheme("s3cret").verify(headers, BODY, now=NOW)


def test_an_upper_case_hex_signature_is_refused_as_signing_verify_does() -> None:
    headers = signing.signed_headers("s3cret", BODY, timestamp=NOW)
    headers[signing.SIGNATURE_HEADER] = headers[signing.SIGNATURE_HEADER].upper()

    with pytest.raises(WebhookSignatureError):
        mpstate_scheme("s3cret").verify(headers, BODY, now=NOW)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"secrets": ""}, "secret"),
        ({"secrets": ["ok", ""]}, "secret"),
        ({"version": "t"}, "version"),
        ({"version": "v 1"}, "version"),
        ({"tolerance_s": float("nan")}, "tolerance_s"),
        ({"tolerance_s": 0}, "tolerance_s"),
        ({"signature_header": ""}, "signature_header"),
    ],
)
def test_a_family_member_with_a_bad_configuration_is_refused(
    kwargs: dict[str, Any], match: str
) -> None:
    options: dict[str, Any] = {"secrets": "s", "signature_header": "X-Sig", **kwargs}
    secrets = options.pop("secrets")

    with pytest.raises(InvalidInputError, match=match):
        HexHmacScheme("custom", secrets, **options)


def test_no_scheme_repr_reveals_a_secret() -> None:
    for scheme in (stripe_scheme(STRIPE_SECRET), StandardWebhooksScheme(SW_SECRET)):
        assert STRIPE_SECRET not in repr(scheme)
        assert SW_SECRET.removeprefix("whsec_") not in repr(scheme)


# -- fal: Ed25519 against a JWKS served on loopback ------------------------------------------------


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class JwksServer:
    """A JWKS endpoint on 127.0.0.1 that counts its requests and can fail, stall or trickle."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {"keys": []}
        self.status = 200
        self.stall_s = 0.0
        self.trickle_s = 0.0
        self.requests = 0
        lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with lock:
                    owner.requests += 1
                time.sleep(owner.stall_s)
                body = json.dumps(owner.document).encode()
                self.send_response(owner.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                step = 1 if owner.trickle_s else len(body)
                try:
                    for start in range(0, len(body), step):
                        self.wfile.write(body[start : start + step])
                        self.wfile.flush()
                        time.sleep(owner.trickle_s)
                except OSError:
                    pass  # the client gave up

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        host, port = self.httpd.server_address[:2]
        self.url = f"http://{host!s}:{port}/.well-known/jwks.json"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def publish(self, *keys: tuple[Ed25519PrivateKey, str]) -> None:
        self.document = {"keys": [ed25519_jwk(k.public_key(), kid) for k, kid in keys]}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    server = JwksServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


FAL_KEY = Ed25519PrivateKey.generate()
FAL_NEXT_KEY = Ed25519PrivateKey.generate()
STRANGER_KEY = Ed25519PrivateKey.generate()
REQUEST_ID = "024ca5b1-45d3-4afd-883e-ad3abe2a1c4d"
USER_ID = "user-42"


def fal_headers(
    key: Ed25519PrivateKey = FAL_KEY, *, ts: int = NOW, body: bytes = BODY
) -> dict[str, str]:
    return fal_signed_headers(key, body, request_id=REQUEST_ID, user_id=USER_ID, timestamp=ts)


def fal_scheme(server: JwksServer, clock: Clock, **options: Any) -> FalScheme:
    cache = {k: options.pop(k) for k in ("max_age_s", "timeout_s") if k in options}
    return FalScheme(JwksKeySet(server.url, clock=clock, **cache), **options)


def test_fals_signed_message_is_the_four_lines_ending_in_the_bodys_sha256_hex() -> None:
    headers = fal_headers()
    message = f"{REQUEST_ID}\n{USER_ID}\n{NOW}\n{hashlib.sha256(BODY).hexdigest()}".encode()

    assert set(headers) == {
        "X-Fal-Webhook-Request-Id",
        "X-Fal-Webhook-User-Id",
        "X-Fal-Webhook-Timestamp",
        "X-Fal-Webhook-Signature",
    }
    FAL_KEY.public_key().verify(bytes.fromhex(headers["X-Fal-Webhook-Signature"]), message)


def test_a_fal_callback_verifies_against_the_served_keys_and_names_its_request_id(
    jwks: JwksServer, clock: Clock
) -> None:
    jwks.publish((STRANGER_KEY, "other"), (FAL_KEY, "k1"))
    scheme = fal_scheme(jwks, clock)

    assert scheme.verify(fal_headers(), BODY, now=NOW) == Verified(REQUEST_ID, NOW)
    assert scheme.verify(fal_headers(ts=NOW + 5), BODY, now=NOW) == Verified(REQUEST_ID, NOW + 5)
    assert jwks.requests == 1  # fetched once, then served from the cache


def test_lower_case_fal_headers_in_a_plain_dict_verify(jwks: JwksServer, clock: Clock) -> None:
    jwks.publish((FAL_KEY, "k1"))
    lower = {name.lower(): value for name, value in fal_headers().items()}

    assert fal_scheme(jwks, clock).verify(lower, BODY, now=NOW).delivery_id == REQUEST_ID


def test_a_fal_callback_signed_by_an_unpublished_key_is_refused(
    jwks: JwksServer, clock: Clock
) -> None:
    jwks.publish((FAL_KEY, "k1"))

    with pytest.raises(WebhookSignatureError, match="does not match any fal public key"):
        fal_scheme(jwks, clock).verify(fal_headers(STRANGER_KEY), BODY, now=NOW)


def test_a_tampered_fal_body_or_header_is_refused(jwks: JwksServer, clock: Clock) -> None:
    jwks.publish((FAL_KEY, "k1"))
    scheme = fal_scheme(jwks, clock)
    headers = fal_headers()

    for changed, body in [
        (headers, BODY + b" "),
        ({**headers, "X-Fal-Webhook-Request-Id": "another"}, BODY),
        ({**headers, "X-Fal-Webhook-User-Id": "user-43"}, BODY),
        ({**headers, "X-Fal-Webhook-Timestamp": str(NOW + 1)}, BODY),
    ]:
        with pytest.raises(WebhookSignatureError, match="does not match"):
            scheme.verify(changed, body, now=NOW)


def test_a_rotated_fal_key_is_fetched_once_after_a_failed_verification(
    jwks: JwksServer, clock: Clock
) -> None:
    jwks.publish((FAL_KEY, "k1"))
    scheme = fal_scheme(jwks, clock)
    assert scheme.verify(fal_headers(), BODY, now=NOW)

    jwks.publish((FAL_KEY, "k1"), (FAL_NEXT_KEY, "k2"))
    clock.now += 61
    assert scheme.verify(fal_headers(FAL_NEXT_KEY), BODY, now=NOW)
    assert scheme.verify(fal_headers(FAL_NEXT_KEY), BODY, now=NOW)
    assert scheme.verify(fal_headers(FAL_KEY), BODY, now=NOW)
    assert jwks.requests == 2


def test_a_verifier_that_tried_the_old_keys_gets_the_keys_another_thread_just_fetched(
    jwks: JwksServer, clock: Clock
) -> None:
    jwks.publish((FAL_KEY, "k1"))
    keys = JwksKeySet(jwks.url, clock=clock)
    old = keys.keys()
    jwks.publish((FAL_NEXT_KEY, "k2"))
    clock.now += 61

    first = keys.refreshed(old)  # the thread that fetches
    second = keys.refreshed(old)  # one that failed on the old keys meanwhile: no second fetch

    assert first is not None
    assert second == first
    assert [k == FAL_NEXT_KEY.public_key() for k in first] == [True]
    assert keys.refreshed(first) is None  # the new keys failed too: too soon to fetch again
    assert jwks.requests == 2


def test_a_flood_of_forged_fal_callbacks_refetches_the_keys_at_most_once_a_minute(
    jwks: JwksServer, clock: Clock
) -> None:
    jwks.publish((FAL_KEY, "k1"))
    scheme = fal_scheme(jwks, clock)
    forged = fal_headers(STRANGER_KEY)

    for _ in range(50):
        with pytest.raises(WebhookSignatureError):
            scheme.verify(forged, BODY, now=NOW)
    assert jwks.requests == 1  # the first load only: the refetch it would ask for is too soon
    clock.now += 61
    for _ in range(50):
        with pytest.raises(WebhookSignatureError):
            scheme.verify(forged, BODY, now=NOW)
    assert jwks.requests == 2


def test_a_stale_or_malformed_fal_callback_is_refused_before_any_key_is_fetched(
    jwks: JwksServer, clock: Clock
) -> None:
    jwks.publish((FAL_KEY, "k1"))
    scheme = fal_scheme(jwks, clock, user_id=USER_ID)
    headers = fal_headers()

    with pytest.raises(WebhookSignatureError, match="replay window"):
        scheme.verify(headers, BODY, now=NOW + 301)
    with pytest.raises(WebhookSignatureError, match="replay window"):
        scheme.verify(headers, BODY, now=NOW - 301)
    for bad in ["zz" * 64, "ab" * 63, "ab" * 65, " " + "ab" * 64]:
        with pytest.raises(WebhookSignatureError, match=r"malformed|128 hex digits"):
            scheme.verify({**headers, "X-Fal-Webhook-Signature": bad}, BODY, now=NOW)
    with pytest.raises(WebhookSignatureError, match="another fal user"):
        scheme.verify({**headers, "X-Fal-Webhook-User-Id": "user-43"}, BODY, now=NOW)
    with pytest.raises(WebhookSignatureError, match="missing"):
        scheme.verify({**headers, "X-Fal-Webhook-Request-Id": ""}, BODY, now=NOW)
    assert jwks.requests == 0


def test_fal_accepts_a_timestamp_at_the_edge_of_its_300_second_window(
    jwks: JwksServer, clock: Clock
) -> None:
    jwks.publish((FAL_KEY, "k1"))
    scheme = fal_scheme(jwks, clock, user_id=USER_ID)

    assert scheme.verify(fal_headers(), BODY, now=NOW + 300).timestamp == NOW
    assert scheme.verify(fal_headers(), BODY, now=NOW - 300).timestamp == NOW


def test_fal_keys_are_fetched_again_once_the_cache_expires(jwks: JwksServer, clock: Clock) -> None:
    jwks.publish((FAL_KEY, "k1"))
    scheme = fal_scheme(jwks, clock, max_age_s=3600)
    assert scheme.verify(fal_headers(), BODY, now=NOW)

    clock.now += 3599
    assert scheme.verify(fal_headers(), BODY, now=NOW)
    assert jwks.requests == 1
    clock.now += 2
    assert scheme.verify(fal_headers(), BODY, now=NOW)
    assert jwks.requests == 2


def test_expired_fal_keys_are_not_used_when_the_jwks_url_fails(
    jwks: JwksServer, clock: Clock
) -> None:
    jwks.publish((FAL_KEY, "k1"))
    scheme = fal_scheme(jwks, clock)
    assert scheme.verify(fal_headers(), BODY, now=NOW)

    jwks.status = 503
    clock.now += 24 * 3600 + 1
    with pytest.raises(JwksUnavailableError, match="HTTP 503"):
        scheme.verify(fal_headers(), BODY, now=NOW)
    with pytest.raises(JwksUnavailableError, match="not retrying yet"):
        scheme.verify(fal_headers(), BODY, now=NOW)
    assert jwks.requests == 2  # the failed load is not retried for a minute
    jwks.status = 200
    clock.now += 61
    assert scheme.verify(fal_headers(), BODY, now=NOW)


@pytest.mark.parametrize(
    "document",
    [
        "not json",
        {"keys": "none"},
        {"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]},
        {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "c2hvcnQ"}]},
        {"keys": [{"kty": "OKP", "crv": "X25519", "x": "A" * 43}]},
    ],
    ids=["not json", "keys not a list", "only rsa", "short x", "x25519"],
)
def test_a_jwks_without_a_usable_ed25519_key_makes_fal_unavailable(
    jwks: JwksServer, clock: Clock, document: Any
) -> None:
    jwks.document = document

    with pytest.raises(JwksUnavailableError):
        fal_scheme(jwks, clock).verify(fal_headers(), BODY, now=NOW)


def test_keys_of_other_types_in_the_jwks_are_skipped(jwks: JwksServer, clock: Clock) -> None:
    jwks.publish((FAL_KEY, "k1"))
    jwks.document["keys"].insert(0, {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "rsa"})

    assert fal_scheme(jwks, clock).verify(fal_headers(), BODY, now=NOW)


def test_a_jwks_url_that_never_answers_fails_within_the_timeout(jwks: JwksServer) -> None:
    jwks.publish((FAL_KEY, "k1"))
    jwks.stall_s = 3.0
    scheme = FalScheme(JwksKeySet(jwks.url, timeout_s=0.3))

    started = time.monotonic()
    with pytest.raises(JwksUnavailableError, match="cannot fetch"):
        scheme.verify(fal_headers(), BODY, now=NOW)
    assert time.monotonic() - started < 2.0


def test_a_jwks_url_trickling_its_answer_fails_within_about_the_timeout(jwks: JwksServer) -> None:
    jwks.publish((FAL_KEY, "k1"))
    jwks.trickle_s = 0.05  # every read succeeds, the whole answer would take ~10 s
    scheme = FalScheme(JwksKeySet(jwks.url, timeout_s=0.5))

    started = time.monotonic()
    with pytest.raises(JwksUnavailableError, match="in time"):
        scheme.verify(fal_headers(), BODY, now=NOW)
    assert time.monotonic() - started < 2.0


def test_concurrent_first_verifications_fetch_the_jwks_once(jwks: JwksServer) -> None:
    jwks.publish((FAL_KEY, "k1"))
    jwks.stall_s = 0.2
    scheme = FalScheme(JwksKeySet(jwks.url))
    results: list[Verified | Exception] = []

    def verify() -> None:
        try:
            results.append(scheme.verify(fal_headers(), BODY, now=NOW))
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=verify) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert results == [Verified(REQUEST_ID, NOW)] * 16
    assert jwks.requests == 1


def test_fal_keys_can_come_from_a_local_jwks_file(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [ed25519_jwk(FAL_KEY.public_key(), "k1")]}))
    scheme = scheme_for("fal", jwks_file=str(path), user_id=USER_ID)

    assert scheme.verify(fal_headers(), BODY, now=NOW) == Verified(REQUEST_ID, NOW)
    with pytest.raises(WebhookSignatureError, match="does not match"):
        scheme.verify(fal_headers(STRANGER_KEY), BODY, now=NOW)


def test_a_missing_or_broken_jwks_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="cannot read"):
        JwksKeySet(file=tmp_path / "absent.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        JwksKeySet(file=tmp_path / "broken.json")


def test_a_key_set_takes_a_url_or_a_file_but_not_both(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError):
        JwksKeySet()
    with pytest.raises(InvalidInputError):
        JwksKeySet("https://example.invalid/jwks.json", file=tmp_path / "jwks.json")
    with pytest.raises(InvalidInputError):
        JwksKeySet("ftp://example.invalid/jwks.json")
    with pytest.raises(InvalidInputError, match="min_refresh_interval_s"):
        JwksKeySet("https://example.invalid/jwks.json", max_age_s=30, min_refresh_interval_s=60)


# -- capability tokens -----------------------------------------------------------------------------

TOKEN_SECRET = "callback-secret-0123456789"
OLD_TOKEN_SECRET = "callback-secret-previous-abc"


def test_a_callback_token_is_192_url_safe_bits_and_deterministic() -> None:
    token = callback_token(TOKEN_SECRET, "run-1", "render", 2)

    assert token == callback_token(TOKEN_SECRET, "run-1", "render", 2)
    assert len(token) == 32
    assert len(base64.urlsafe_b64decode(token)) == 24
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_a_callback_token_checks_for_its_own_run_step_and_attempt_only() -> None:
    token = callback_token(TOKEN_SECRET, "run-1", "render", 2)

    assert check_callback_token(TOKEN_SECRET, "run-1", "render", 2, token)
    assert check_callback_token(TOKEN_SECRET, "run-1", "render", "2", token)
    assert not check_callback_token(TOKEN_SECRET, "run-2", "render", 2, token)
    assert not check_callback_token(TOKEN_SECRET, "run-1", "upload", 2, token)
    assert not check_callback_token(TOKEN_SECRET, "run-1", "render", 3, token)
    assert not check_callback_token("another-secret-0123456789", "run-1", "render", 2, token)


def test_the_fields_are_length_prefixed_so_shifting_characters_between_them_changes_the_token() -> (
    None
):
    assert callback_token(TOKEN_SECRET, "ab", "c", 1) != callback_token(TOKEN_SECRET, "a", "bc", 1)
    assert callback_token(TOKEN_SECRET, "a", "b1", 1) != callback_token(TOKEN_SECRET, "a", "b", 11)


def test_either_secret_checks_a_token_during_a_rotation() -> None:
    old = callback_token(OLD_TOKEN_SECRET, "run-1", "render", 0)

    assert check_callback_token([TOKEN_SECRET, OLD_TOKEN_SECRET], "run-1", "render", 0, old)
    assert not check_callback_token([TOKEN_SECRET], "run-1", "render", 0, old)


@pytest.mark.parametrize(
    ("attempt", "token_change"),
    [
        ("02", None),
        ("-2", None),
        ("2.0", None),
        (True, None),
        (-2, None),
        (2, "truncated"),
        (2, "flipped"),
        (2, "non-ascii"),
        (2, "not a string"),
    ],
)
def test_a_malformed_attempt_or_token_checks_false_without_raising(
    attempt: Any, token_change: str | None
) -> None:
    good = callback_token(TOKEN_SECRET, "run-1", "render", 2)
    token: Any = {
        None: good,
        "truncated": good[:-1],
        "flipped": good[:-1] + ("A" if good[-1] != "A" else "B"),
        "non-ascii": good[:-1] + "é",
        "not a string": None,
    }[token_change]

    assert check_callback_token(TOKEN_SECRET, "run-1", "render", attempt, token) is False


def test_callback_tokens_need_a_long_enough_secret() -> None:
    with pytest.raises(InvalidInputError, match="at least 16"):
        callback_token("short", "run-1", "render", 0)
    with pytest.raises(InvalidInputError, match="at least 16"):
        check_callback_token([TOKEN_SECRET, "short"], "run-1", "render", 0, "x" * 32)
    with pytest.raises(InvalidInputError):
        callback_token(TOKEN_SECRET, "", "render", 0)


def test_the_suggested_callback_path_carries_the_ids_the_attempt_and_the_token() -> None:
    path = callback_path(TOKEN_SECRET, "luma", "run 1", "render", 3)
    token = callback_token(TOKEN_SECRET, "run 1", "render", 3)

    assert path == f"/webhooks/luma/run%201/render/3/{token}"
    with pytest.raises(InvalidInputError, match="cannot contain"):
        callback_path(TOKEN_SECRET, "luma", "run/1", "render", 3)


# -- the registry ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "secrets", "headers_for"),
    [
        ("standard-webhooks", SW_SECRET, sw_headers),
        ("stripe", STRIPE_SECRET, lambda: stripe_scheme(STRIPE_SECRET).sign(BODY, timestamp=NOW)),
        (
            "elevenlabs",
            "el-secret",
            lambda: elevenlabs_scheme("el-secret").sign(BODY, timestamp=NOW),
        ),
        ("mpstate", "s3cret", lambda: signing.signed_headers("s3cret", BODY, timestamp=NOW)),
    ],
)
def test_each_registry_name_builds_a_scheme_that_verifies_its_providers_callbacks(
    name: str, secrets: str, headers_for: Any
) -> None:
    scheme = scheme_for(name, [secrets])

    assert isinstance(scheme, SignatureScheme)
    assert scheme.name == name
    assert scheme.verify(headers_for(), BODY, now=NOW).timestamp == NOW


def test_the_registry_builds_fal_from_a_jwks_url(jwks: JwksServer) -> None:
    jwks.publish((FAL_KEY, "k1"))
    scheme = scheme_for("fal", (), jwks_url=jwks.url, user_id=USER_ID, timeout_s=2)

    assert scheme.name == "fal"
    assert scheme.verify(fal_headers(), BODY, now=NOW).delivery_id == REQUEST_ID
    assert set(SCHEME_NAMES) == {"standard-webhooks", "stripe", "elevenlabs", "mpstate", "fal"}


def test_the_registry_passes_the_tolerance_on() -> None:
    scheme = scheme_for("stripe", [STRIPE_SECRET], tolerance_s=10)
    headers = stripe_scheme(STRIPE_SECRET).sign(BODY, timestamp=NOW)

    with pytest.raises(WebhookSignatureError, match="replay window"):
        scheme.verify(headers, BODY, now=NOW + 11)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("svix", {}),
        ("stripe", {"jwks_url": "https://example.invalid"}),
        ("fal", {"secret": "x"}),
        ("fal", {"jwks_url": "https://example.invalid/j", "jwks_file": "j.json"}),
        ("stripe", {"tolerance_s": -1}),
    ],
    ids=["unknown name", "option of another scheme", "unknown option", "url and file", "bad"],
)
def test_the_registry_refuses_what_it_cannot_build(name: str, options: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        scheme_for(name, ["secret"], **options)


# -- every verifier refuses malformed input with WebhookSignatureError only ------------------------

_NAMES = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "svix-signature",
    "Stripe-Signature",
    "ElevenLabs-Signature",
    signing.TIMESTAMP_HEADER,
    signing.SIGNATURE_HEADER,
    "X-Fal-Webhook-Request-Id",
    "X-Fal-Webhook-User-Id",
    "X-Fal-Webhook-Timestamp",
    "X-Fal-Webhook-Signature",
]
_VALUES = st.one_of(
    st.text(max_size=40),
    st.sampled_from([str(NOW), "t=1732406400,v1=", "v1,AAAA", "ab" * 64, "v1=" + "0" * 64]),
    st.builds(lambda n: "9" * n, st.integers(0, 6000)),
)


@pytest.fixture(scope="module")
def every_scheme(tmp_path_factory: pytest.TempPathFactory) -> list[SignatureScheme]:
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(json.dumps({"keys": [ed25519_jwk(FAL_KEY.public_key())]}))
    return [
        StandardWebhooksScheme(SW_SECRET),
        stripe_scheme(STRIPE_SECRET),
        elevenlabs_scheme("el-secret"),
        mpstate_scheme("s3cret"),
        FalScheme(JwksKeySet(file=path), user_id=USER_ID),
    ]


@settings(max_examples=300)
@given(
    headers=st.dictionaries(st.one_of(st.sampled_from(_NAMES), st.text(max_size=20)), _VALUES),
    body=st.binary(max_size=64),
    now=st.one_of(st.just(float(NOW)), st.floats(allow_nan=True, allow_infinity=True)),
)
def test_arbitrary_headers_never_raise_anything_but_a_signature_error(
    every_scheme: list[SignatureScheme], headers: dict[str, str], body: bytes, now: float
) -> None:
    for scheme in every_scheme:
        with pytest.raises(WebhookSignatureError):
            scheme.verify(headers, body, now=now)


@pytest.mark.parametrize("headers", [None, [("webhook-id", "x")], {"webhook-id": b"msg"}], ids=repr)
@pytest.mark.parametrize("body", [BODY, "a str body"], ids=["bytes", "str"])
def test_headers_or_bodies_of_the_wrong_type_are_refused_as_a_signature_error(
    every_scheme: list[SignatureScheme], headers: Any, body: Any
) -> None:
    for scheme in every_scheme:
        with pytest.raises(WebhookSignatureError):
            scheme.verify(headers, body, now=NOW)
