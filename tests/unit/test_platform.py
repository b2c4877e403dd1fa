"""Pure platform rules: settings, money, trace context, partitions, envelopes. No I/O."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import context
from shared.config import ConfigError, PlatformConfig
from shared.events import Event, EventCatalog, MalformedEvent, decode, encode, partition_of, seal
from shared.failpoints import Failpoints
from shared.ids import new_id
from shared.keys import Keys
from shared.money import CurrencyMismatch, Money

GOOD_ENV = {
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/postgres",
}


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("BUS_PARTITIONS", "many", "BUS_PARTITIONS: expected an integer >= 1, got 'many'"),
        ("BUS_PARTITIONS", "0", "BUS_PARTITIONS: expected an integer >= 1, got '0'"),
        ("LOG_LEVEL", "loud", "LOG_LEVEL: expected one of debug, info, warning, error, got 'loud'"),
        ("REDIS_URL", "localhost:6379", "REDIS_URL: expected a URL like redis://host:port/..."),
        ("DATABASE_URL", "mysql://u:secret@h/db", "got 'mysql://u:***@h/db'"),
    ],
)
def test_a_bad_setting_fails_with_one_line_naming_it(
    variable: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        PlatformConfig.from_env("wallet", {**GOOD_ENV, variable: value})
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert "secret" not in str(error.value)


def test_a_missing_server_url_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^DATABASE_URL: required, but not set$"):
        PlatformConfig.from_env("wallet", {"REDIS_URL": GOOD_ENV["REDIS_URL"]})


def test_settings_default_sensibly() -> None:
    config = PlatformConfig.from_env("wallet", GOOD_ENV)
    assert config.bus.partitions == 4
    assert config.bus.namespace == "cardless"
    assert config.max_body_bytes == 1 << 20


@given(st.integers(min_value=-(10**15), max_value=10**15), st.sampled_from(["CNY", "JPY", "BHD"]))
def test_money_round_trips_through_its_decimal_form_exactly(minor: int, currency: str) -> None:
    money = Money(minor, currency)
    assert Money.parse(money.to_decimal_string(), currency) == money


def test_money_refuses_floats_mixed_currencies_and_excess_precision() -> None:
    with pytest.raises(TypeError):
        Money(12.5, "CNY")  # type: ignore[arg-type]
    with pytest.raises(CurrencyMismatch):
        _ = Money(1, "CNY") + Money(1, "HKD")
    with pytest.raises(ValueError, match="<= 2 decimals"):
        Money.parse("1.005", "CNY")
    assert Money.parse("12.5", "CNY") == Money(1250, "CNY")
    assert Money(-5, "CNY").to_decimal_string() == "-0.05"


def test_ids_are_uuid7_and_sort_by_creation() -> None:
    ids = [new_id() for _ in range(1000)]
    assert all(i.version == 7 for i in ids)
    assert ids == sorted(ids)


def test_traceparent_is_continued_when_valid_and_started_when_not() -> None:
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    child = context.child_traceparent(parent)
    assert child.startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    assert child != parent
    for bad in (None, "", "00-" + "0" * 32 + "-00f067aa0ba902b7-01", "garbage"):
        fresh = context.child_traceparent(bad)
        assert context.parse_traceparent(fresh) is not None


@given(st.text(min_size=1, max_size=40), st.integers(min_value=1, max_value=64))
def test_a_key_always_maps_to_the_same_partition(key: str, partitions: int) -> None:
    assert partition_of(key, partitions) == partition_of(key, partitions)
    assert 0 <= partition_of(key, partitions) < partitions


def test_keys_of_one_partition_share_a_cluster_hash_tag() -> None:
    keys = Keys("city")
    tags = {
        k[k.index("{") : k.index("}") + 1]
        for k in (
            keys.stream("wallet", 3),
            keys.lease("wallet", 3, "transit"),
            keys.dead_letters("wallet", 3, "transit"),
        )
    }
    assert tags == {"{wallet.3}"}


catalog = EventCatalog("demo")


@catalog.event("demo.happened", version=2)
class Happened(Event):
    amount: int
    rider: uuid.UUID


def test_an_envelope_round_trips_with_its_typed_payload() -> None:
    payload = Happened(amount=250, rider=new_id())
    envelope = seal(
        payload, key="k", source="demo", occurred_at=datetime.now(UTC), traceparent=None
    )
    decoded = decode(encode(envelope))
    assert (decoded.type, decoded.version) == ("demo.happened", 2)
    assert catalog.decode(decoded) == payload


def test_events_registered_twice_are_refused() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        catalog.event("demo.happened", version=2)(Happened)


def test_an_unknown_version_is_malformed() -> None:
    envelope = seal(
        Happened(amount=1, rider=new_id()),
        key="k",
        source="demo",
        occurred_at=datetime.now(UTC),
        traceparent=None,
    )
    with pytest.raises(MalformedEvent, match=r"unknown event type 'demo\.happened' v3"):
        catalog.payload_type(envelope.type, 3)


def test_failpoints_parse_their_spec() -> None:
    points = Failpoints.from_env({"CARDLESS_FAILPOINTS": "relay.after_xadd=0, consumer.x"})
    points.hit("relay.after_xadd")  # armed with probability 0: never fires
    points.hit("not.armed")
    assert points._armed == {"relay.after_xadd": 0.0, "consumer.x": 1.0}


def test_a_log_line_is_one_json_object_with_request_and_trace_ids() -> None:
    import json
    import logging

    from shared.logs import JsonFormatter

    record = logging.LogRecord(
        "wallet", logging.INFO, __file__, 1, "transfer %s posted", ("t-1",), None
    )
    record.transfer_id = "t-1"
    rid = context.request_id.set("req-9")
    trace = context.traceparent.set("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    try:
        line = JsonFormatter("wallet").format(record)
    finally:
        context.request_id.reset(rid)
        context.traceparent.reset(trace)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["msg"] == "transfer t-1 posted"
    assert entry["request_id"] == "req-9"
    assert entry["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert entry["transfer_id"] == "t-1"
    assert entry["service"] == "wallet"
