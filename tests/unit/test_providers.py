"""Provider signatures: the published vectors, our edge cases, and independent peer libraries."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from alipay import AliPay
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks import Webhook

from services.wallet.providers import (
    DEFAULT_TOLERANCE,
    AlipayKeys,
    SignatureError,
    StandardWebhooksKeys,
    alipay_signed_content,
    sign_alipay,
    sign_standard_webhook,
    standard_webhook_headers,
    verify_alipay_notification,
    verify_standard_webhook,
)

# Copies of ../shared/data/providers (tests/data/README.md says how to refresh them).
PROVIDER_VECTORS = Path(__file__).resolve().parents[1] / "data" / "providers"  # see its README


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((PROVIDER_VECTORS / name).read_text(encoding="utf-8"))
    return data


STANDARD_WEBHOOKS = _load("standard-webhooks.json")
ALIPAY = _load("alipay-notify-rsa2.json")
ALIPAY_PUBLIC_KEYS = {name: key["pem"] for name, key in ALIPAY["keys"].items()}
V1A_VECTOR = next(v for v in STANDARD_WEBHOOKS["vectors"] if v["id"] == "sw-v1a-01")

OLD_SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
NEW_SECRET = "whsec_" + base64.b64encode(bytes(range(32, 64))).decode()
SENT_AT = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
MSG_ID = "msg_2nCpAmB9wrzCWc3ZkhE5Ju5LJ3H"
BODY = b'{"type":"payment.succeeded","amount":{"minor":1250,"currency":"CNY"}}'
TRADE = {
    "notify_type": "trade_status_sync",
    "notify_id": "2026112500222155624068450559358070",
    "notify_time": "2026-11-25 12:00:01",
    "app_id": "2021000000000001",
    "out_trade_no": "wallet-topup-0001",
    "trade_no": "2026112522001468450512505578",
    "trade_status": "TRADE_SUCCESS",
    "total_amount": "12.50",
    "subject": "钱包充值 top-up & more",
    "fund_bill_list": '[{"amount":"12.50","fundChannel":"ALIPAYACCOUNT"}]',
    "passback_params": "",
}


def _at(unix: int) -> datetime:
    return datetime.fromtimestamp(unix, UTC)


def _headers(signature: str, timestamp: datetime = SENT_AT) -> dict[str, str]:
    return {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": signature,
    }


def _webhook_reason(
    headers: dict[str, str], secrets: list[str], now: datetime = SENT_AT, body: bytes = BODY
) -> str | None:
    """None when the webhook verifies, else the rejection reason."""
    try:
        verify_standard_webhook(body, headers, secrets, now=now)
    except SignatureError as error:
        return error.reason
    return None


def _alipay_reason(params: dict[str, str], public_keys: list[str]) -> str | None:
    try:
        verify_alipay_notification(params, public_keys)
    except SignatureError as error:
        return error.reason
    return None


@pytest.fixture(scope="module")
def alipay_private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _private_pem(key: rsa.RSAPrivateKey) -> str:
    pkcs8 = serialization.PrivateFormat.PKCS8
    return key.private_bytes(
        serialization.Encoding.PEM, pkcs8, serialization.NoEncryption()
    ).decode()


def _public_pem(key: rsa.RSAPrivateKey) -> str:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(serialization.Encoding.PEM, spki).decode()


# Standard Webhooks: published vectors


@pytest.mark.parametrize("vector", STANDARD_WEBHOOKS["vectors"], ids=lambda v: v["id"])
def test_each_standard_webhooks_vector_verifies_exactly_when_it_must(vector: Any) -> None:
    tolerance = vector.get("tolerance_seconds")
    try:
        verify_standard_webhook(
            vector["body"].encode(),
            vector["headers"],
            [vector.get("secret") or vector["public_key"]],
            now=_at(vector["verify_at_unix"]),
            tolerance=DEFAULT_TOLERANCE if tolerance is None else timedelta(seconds=tolerance),
        )
    except SignatureError:
        verified = False
    else:
        verified = True
    assert verified == vector["must_verify"]


@pytest.mark.parametrize(
    "vector",
    [v for v in STANDARD_WEBHOOKS["vectors"] if "expected_signature" in v],
    ids=lambda v: v["id"],
)
def test_our_signer_reproduces_each_published_signature(vector: Any) -> None:
    headers = vector["headers"]
    key = vector.get("signing_key") or vector["secret"]
    timestamp = int(headers["webhook-timestamp"])
    signed = sign_standard_webhook(key, headers["webhook-id"], timestamp, vector["body"].encode())
    assert signed == vector["expected_signature"]


def test_a_v1a_signature_verifies_with_the_signing_key_as_well_as_the_public_key() -> None:
    now = _at(V1A_VECTOR["verify_at_unix"])
    body = V1A_VECTOR["body"].encode()
    verify_standard_webhook(body, V1A_VECTOR["headers"], V1A_VECTOR["signing_key"], now=now)


def test_a_v1a_entry_is_ignored_when_only_hmac_secrets_are_trusted() -> None:
    now = _at(V1A_VECTOR["verify_at_unix"])
    with pytest.raises(SignatureError, match="no matching signature"):
        verify_standard_webhook(
            V1A_VECTOR["body"].encode(), V1A_VECTOR["headers"], OLD_SECRET, now=now
        )


# Standard Webhooks: time window, rotation, tampering, malformed input


@pytest.mark.parametrize(
    ("seconds_after_sending", "accepted"),
    [(-301, False), (-300, True), (0, True), (300, True), (301, False)],
)
def test_a_webhook_is_accepted_only_within_five_minutes_either_side_of_our_clock(
    seconds_after_sending: int, accepted: bool
) -> None:
    headers = standard_webhook_headers(OLD_SECRET, MSG_ID, SENT_AT, BODY)
    now = SENT_AT + timedelta(seconds=seconds_after_sending)
    reason = _webhook_reason(headers, [OLD_SECRET], now=now)
    assert reason == (None if accepted else "timestamp outside tolerance")


def test_a_wider_tolerance_accepts_an_older_webhook() -> None:
    headers = standard_webhook_headers(OLD_SECRET, MSG_ID, SENT_AT, BODY)
    later = SENT_AT + timedelta(minutes=9)
    verify_standard_webhook(BODY, headers, [OLD_SECRET], now=later, tolerance=timedelta(minutes=10))


def test_a_tampered_body_is_rejected() -> None:
    headers = standard_webhook_headers(OLD_SECRET, MSG_ID, SENT_AT, BODY)
    tampered = BODY.replace(b"1250", b"9250")
    assert _webhook_reason(headers, [OLD_SECRET], body=tampered) == "no matching signature"


def test_a_webhook_signed_with_another_secret_is_rejected() -> None:
    headers = standard_webhook_headers(OLD_SECRET, MSG_ID, SENT_AT, BODY)
    assert _webhook_reason(headers, [NEW_SECRET]) == "no matching signature"


def test_header_names_are_matched_whatever_their_case() -> None:
    headers = standard_webhook_headers(OLD_SECRET, MSG_ID, SENT_AT, BODY)
    shouted = {name.title(): value for name, value in headers.items()}
    verify_standard_webhook(BODY, shouted, [OLD_SECRET], now=SENT_AT)


def test_a_header_signed_during_rotation_verifies_with_either_secret_alone() -> None:
    headers = standard_webhook_headers([OLD_SECRET, NEW_SECRET], MSG_ID, SENT_AT, BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert _webhook_reason(headers, [OLD_SECRET]) is None
    assert _webhook_reason(headers, [NEW_SECRET]) is None


@pytest.mark.parametrize("signed_with", [OLD_SECRET, NEW_SECRET], ids=["old", "new"])
def test_a_notification_signed_with_a_rotated_out_secret_still_verifies_during_overlap(
    signed_with: str,
) -> None:
    headers = standard_webhook_headers([signed_with], MSG_ID, SENT_AT, BODY)
    assert _webhook_reason(headers, [OLD_SECRET, NEW_SECRET]) is None


def test_a_secret_dropped_after_rotation_no_longer_verifies() -> None:
    headers = standard_webhook_headers(OLD_SECRET, MSG_ID, SENT_AT, BODY)
    assert _webhook_reason(headers, [NEW_SECRET]) == "no matching signature"


def test_an_aware_timestamp_in_any_zone_signs_the_same_second() -> None:
    in_shanghai = SENT_AT.astimezone(timezone(timedelta(hours=8)))
    by_datetime = sign_standard_webhook(OLD_SECRET, MSG_ID, in_shanghai, BODY)
    assert by_datetime == sign_standard_webhook(OLD_SECRET, MSG_ID, int(SENT_AT.timestamp()), BODY)


def test_a_naive_clock_is_refused_as_a_programming_error() -> None:
    headers = standard_webhook_headers(OLD_SECRET, MSG_ID, SENT_AT, BODY)
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_standard_webhook(BODY, headers, [OLD_SECRET], now=SENT_AT.replace(tzinfo=None))


VALID_SIGNATURE = sign_standard_webhook(OLD_SECRET, MSG_ID, SENT_AT, BODY)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"webhook-id": None}, "missing header webhook-id"),
        ({"webhook-timestamp": None}, "missing header webhook-timestamp"),
        ({"webhook-signature": None}, "missing header webhook-signature"),
        ({"webhook-signature": ""}, "missing header webhook-signature"),
        ({"webhook-timestamp": "1764072000.0"}, "malformed header webhook-timestamp"),
        ({"webhook-timestamp": "-1764072000"}, "malformed header webhook-timestamp"),
        ({"webhook-timestamp": "١٧٦٤٠٧٢٠٠٠"}, "malformed header webhook-timestamp"),
        ({"webhook-timestamp": "9" * 5000}, "malformed header webhook-timestamp"),
        ({"webhook-id": "msg_\udcff"}, "malformed header webhook-id"),
        ({"webhook-signature": "garbage"}, "no matching signature"),
        ({"webhook-signature": "v1,"}, "no matching signature"),
        ({"webhook-signature": "v1,***not base64***"}, "no matching signature"),
        ({"webhook-signature": "v1,é"}, "no matching signature"),
        ({"webhook-signature": VALID_SIGNATURE.replace("v1,", "v1a,")}, "no matching signature"),
        ({"webhook-signature": VALID_SIGNATURE.replace("v1,", "v2,")}, "no matching signature"),
    ],
)
def test_malformed_headers_are_rejected_with_a_reason_that_reveals_nothing(
    change: dict[str, str | None], reason: str
) -> None:
    headers = {**_headers(VALID_SIGNATURE), **change}
    received = {name: value for name, value in headers.items() if value is not None}
    rejected_as = _webhook_reason(received, [OLD_SECRET])
    assert rejected_as == reason
    for secret in (OLD_SECRET, OLD_SECRET.removeprefix("whsec_"), BODY.decode()):
        assert secret not in rejected_as


def test_one_garbled_entry_does_not_hide_a_valid_one() -> None:
    headers = _headers(f"garbage v1,%%% {VALID_SIGNATURE}")
    assert _webhook_reason(headers, [OLD_SECRET]) is None


any_text = st.text(st.characters(exclude_categories=()), max_size=40)
signature_entry = st.builds(
    "{}{}{}".format,
    st.sampled_from(["v1", "v1a", "v2", "", "V1"]),
    st.sampled_from([",", "", ",,", "=", " "]),
    st.one_of(any_text, st.binary(max_size=70).map(lambda b: base64.b64encode(b).decode())),
)


@given(
    msg_id=any_text,
    timestamp=st.one_of(any_text, st.integers(1764071000, 1764073000).map(str)),
    signature=st.one_of(any_text, st.lists(signature_entry, max_size=5).map(" ".join)),
    extra=st.dictionaries(any_text, any_text, max_size=3),
    body=st.binary(max_size=64),
)
def test_any_received_headers_are_accepted_or_rejected_with_a_signature_error_only(
    msg_id: str, timestamp: str, signature: str, extra: dict[str, str], body: bytes
) -> None:
    headers = {**extra, "Webhook-Id": msg_id, "webhook-timestamp": timestamp}
    headers["WEBHOOK-SIGNATURE"] = signature
    reason = _webhook_reason(headers, [OLD_SECRET, V1A_VECTOR["public_key"]], body=body)
    assert reason is None or OLD_SECRET.removeprefix("whsec_") not in reason


def test_a_bad_secret_is_a_configuration_error_that_never_echoes_it() -> None:
    with pytest.raises(ValueError, match="not valid base64") as error:
        StandardWebhooksKeys(("whsec_s3cr3t!value",))
    assert "s3cr3t" not in str(error.value)


def test_configured_keys_never_show_their_secrets(alipay_private_key: rsa.RSAPrivateKey) -> None:
    webhook_keys = StandardWebhooksKeys((OLD_SECRET, NEW_SECRET))
    public_keys = (_public_pem(alipay_private_key),)
    alipay_keys = AlipayKeys(public_keys, _private_pem(alipay_private_key))
    assert OLD_SECRET not in repr(webhook_keys)
    assert "PRIVATE" not in repr(alipay_keys)


def test_a_public_key_cannot_sign() -> None:
    with pytest.raises(ValueError, match="cannot sign"):
        sign_standard_webhook(V1A_VECTOR["public_key"], MSG_ID, SENT_AT, BODY)


# Standard Webhooks: the standardwebhooks library as an independent peer (real clock only)


def test_our_outgoing_webhook_verifies_with_the_standard_webhooks_library() -> None:
    headers = standard_webhook_headers([NEW_SECRET], MSG_ID, datetime.now(UTC), BODY)
    Webhook(NEW_SECRET).verify(BODY, headers, json_parse=False)


def test_our_rotation_header_verifies_with_either_secret_in_the_library() -> None:
    headers = standard_webhook_headers([OLD_SECRET, NEW_SECRET], MSG_ID, datetime.now(UTC), BODY)
    Webhook(OLD_SECRET).verify(BODY, headers, json_parse=False)
    Webhook(NEW_SECRET).verify(BODY, headers, json_parse=False)


def test_a_webhook_signed_by_the_standard_webhooks_library_verifies_here() -> None:
    now = datetime.now(UTC)
    signature = Webhook(OLD_SECRET).sign(MSG_ID, now, BODY.decode())
    verify_standard_webhook(BODY, _headers(signature, now), [OLD_SECRET, NEW_SECRET], now=now)


# Alipay: published vectors


def _vector_keys(vector: Any) -> list[str]:
    return [ALIPAY_PUBLIC_KEYS[vector["public_key"]]]


@pytest.mark.parametrize("vector", ALIPAY["vectors"], ids=lambda v: v["id"])
def test_each_alipay_vector_verifies_exactly_when_it_must(vector: Any) -> None:
    reason = _alipay_reason(vector["params"], _vector_keys(vector))
    assert (reason is None) == vector["must_verify"]


@pytest.mark.parametrize("vector", ALIPAY["vectors"], ids=lambda v: v["id"])
def test_each_alipay_vector_signs_the_documented_input(vector: Any) -> None:
    keep_sign_type = "sign_type" not in vector["excluded_keys"]
    signed_input = alipay_signed_content(vector["params"], keep_sign_type=keep_sign_type)
    assert signed_input == vector["signed_input"]


def test_an_open_platform_notification_is_signed_over_its_sign_type() -> None:
    vector = next(v for v in ALIPAY["vectors"] if "must_verify_if_sign_type_dropped" in v)
    key = serialization.load_pem_public_key(ALIPAY_PUBLIC_KEYS[vector["public_key"]].encode())
    assert isinstance(key, rsa.RSAPublicKey)
    signature = base64.b64decode(vector["params"]["sign"])
    without_sign_type = alipay_signed_content(vector["params"], keep_sign_type=False).encode()
    with pytest.raises(InvalidSignature):
        key.verify(signature, without_sign_type, padding.PKCS1v15(), hashes.SHA256())
    assert not vector["must_verify_if_sign_type_dropped"]


def test_a_verified_notification_is_returned_without_its_signature() -> None:
    vector = ALIPAY["vectors"][0]
    verified = verify_alipay_notification(vector["params"], _vector_keys(vector))
    assert verified == {k: v for k, v in vector["params"].items() if k != "sign"}


def test_alipay_keys_may_be_given_as_bare_base64_as_alipay_publishes_them() -> None:
    vector = ALIPAY["vectors"][0]
    bare = "".join(_vector_keys(vector)[0].strip().splitlines()[1:-1])
    verify_alipay_notification(vector["params"], bare)


def test_a_notification_verifies_while_alipay_keys_rotate() -> None:
    vector = ALIPAY["vectors"][0]
    keys = [ALIPAY_PUBLIC_KEYS["alipay_public_key_v2"], ALIPAY_PUBLIC_KEYS["alipay_public_key_v1"]]
    verify_alipay_notification(vector["params"], keys)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"sign": None}, "missing parameter sign"),
        ({"sign": ""}, "missing parameter sign"),
        ({"sign": "not base64!"}, "malformed parameter sign"),
        ({"sign_type": "RSA"}, "unsupported sign_type"),
        ({"subject": "\udcff"}, "malformed parameters"),
        ({"sign": base64.b64encode(b"\0" * 256).decode()}, "no matching signature"),
    ],
)
def test_malformed_notifications_are_rejected_with_a_reason(
    change: dict[str, str | None], reason: str
) -> None:
    vector = ALIPAY["vectors"][0]
    params = {k: v for k, v in {**vector["params"], **change}.items() if v is not None}
    assert _alipay_reason(params, _vector_keys(vector)) == reason


any_base64 = st.binary(min_size=1, max_size=300).map(lambda b: base64.b64encode(b).decode())


@given(
    params=st.dictionaries(st.sampled_from(["sign_type", "total_amount"]) | any_text, any_text),
    sign=st.one_of(any_text, any_base64),
)
def test_any_forged_form_is_rejected_with_a_signature_error_only(
    params: dict[str, str], sign: str
) -> None:
    forged = {**params, "sign": sign}
    assert _alipay_reason(forged, [ALIPAY_PUBLIC_KEYS["alipay_public_key_v1"]]) is not None


# Alipay: python-alipay-sdk as an independent peer, with a key pair made for this run


def _sdk(key: rsa.RSAPrivateKey) -> AliPay:
    # The SDK loads both keys eagerly; one pair plays Alipay (signing) and merchant (verifying).
    return AliPay(
        TRADE["app_id"],
        app_private_key_string=_private_pem(key),
        alipay_public_key_string=_public_pem(key),
    )


def _sdk_signed(key: rsa.RSAPrivateKey) -> dict[str, str]:
    query = _sdk(key).sign_data(dict(TRADE))
    return {**dict(parse_qsl(query, keep_blank_values=True)), "sign_type": "RSA2"}


def test_a_notification_signed_by_the_alipay_sdk_verifies_here(
    alipay_private_key: rsa.RSAPrivateKey,
) -> None:
    verified = verify_alipay_notification(
        _sdk_signed(alipay_private_key), _public_pem(alipay_private_key)
    )
    assert verified == {**TRADE, "sign_type": "RSA2"}


def test_our_signed_notification_verifies_with_the_alipay_sdk(
    alipay_private_key: rsa.RSAPrivateKey,
) -> None:
    form = sign_alipay(TRADE, _private_pem(alipay_private_key))
    signature = form.pop("sign")
    assert _sdk(alipay_private_key).verify(form, signature)


def test_our_signature_is_byte_identical_to_the_alipay_sdks(
    alipay_private_key: rsa.RSAPrivateKey,
) -> None:
    ours = sign_alipay(TRADE, _private_pem(alipay_private_key))
    assert ours == _sdk_signed(alipay_private_key)


def test_a_changed_total_amount_is_rejected_by_both_sides(
    alipay_private_key: rsa.RSAPrivateKey,
) -> None:
    form = {
        **sign_alipay(TRADE, _private_pem(alipay_private_key)),
        "total_amount": "1250.00",
    }
    assert _alipay_reason(form, [_public_pem(alipay_private_key)]) == "no matching signature"
    signature = form.pop("sign")
    assert not _sdk(alipay_private_key).verify(form, signature)


def test_a_notification_signed_over_its_sign_type_verifies_here(
    alipay_private_key: rsa.RSAPrivateKey,
) -> None:
    form = sign_alipay(TRADE, _private_pem(alipay_private_key), keep_sign_type=True)
    verify_alipay_notification(form, _public_pem(alipay_private_key))
