"""Transit's own settings, from the environment (``TRANSIT_*``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time, timedelta
from pathlib import Path

from services.transit.feed import DEMO_FEED
from shared.config import ConfigError, Env

DAY_S = 86400


@dataclass(frozen=True)
class TransitConfig:
    """The fare feed, the operator paid, and how long credentials and journeys last."""

    feed: Path = DEMO_FEED
    operator: str = "metro"
    # A tap pair is priced as one leg on this route: a gate cannot know the lines ridden, and
    # inside the paid area the fare depends on the stations (their zones) only.
    fare_route: str = "L1"
    fare_media: str = "qr"
    credential_ttl_s: int = DAY_S
    max_journey_s: int = 4 * 3600
    repricing_days: int = 7  # how far back a late tap can still change a journey
    feed_check_s: int = 30  # how often the feed's files are checked for a new publication
    capping_day_start: time = time(4, 30)  # local time: a capping day runs to 04:29 next day
    # Transit as an agency of identity, for concessions: where the gateway is, and the client
    # (its private key, PEM) it signs in as. Without a key, concessions are unavailable.
    gateway_url: str = "http://127.0.0.1:8080"
    identity_client: str = "metro-concessions"
    identity_key: str = field(default="", repr=False)

    @property
    def max_journey(self) -> timedelta:
        return timedelta(seconds=self.max_journey_s)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> TransitConfig:
        env = Env(environ)
        return cls(
            feed=Path(env.text("TRANSIT_FEED", str(DEMO_FEED))),
            operator=env.text("TRANSIT_OPERATOR", cls.operator),
            fare_route=env.text("TRANSIT_FARE_ROUTE", cls.fare_route),
            fare_media=env.text("TRANSIT_FARE_MEDIA", cls.fare_media),
            credential_ttl_s=env.integer(
                "TRANSIT_CREDENTIAL_TTL_S", cls.credential_ttl_s, minimum=60, maximum=DAY_S
            ),
            max_journey_s=env.integer(
                "TRANSIT_MAX_JOURNEY_S", cls.max_journey_s, minimum=600, maximum=DAY_S
            ),
            feed_check_s=env.integer("TRANSIT_FEED_CHECK_S", cls.feed_check_s, minimum=1),
            gateway_url=env.text("TRANSIT_GATEWAY_URL", cls.gateway_url),
            identity_client=env.text("TRANSIT_IDENTITY_CLIENT", cls.identity_client),
            identity_key=env.document("TRANSIT_IDENTITY_KEY"),
            capping_day_start=_clock_time(
                "TRANSIT_CAPPING_DAY_START", env.text("TRANSIT_CAPPING_DAY_START", "04:30")
            ),
        )


def _clock_time(name: str, text: str) -> time:
    try:
        hours, minutes = (int(part) for part in text.split(":"))
        return time(hours, minutes)
    except ValueError:
        raise ConfigError(f"{name}: expected a local time HH:MM, got {text!r}") from None
