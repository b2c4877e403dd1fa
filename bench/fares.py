"""``cardless bench fares``: journeys priced per second on the demo city's feed, on one core.

The journeys are what the gates hand the fare engine: one to three metro legs (a change of line
at an interchange joins into one fare leg), every rider category, the phone's QR code as the
medium, spread over the day. Each pass prices every journey once; the engine is built once, as
the service does, so its caches are warm after the first pass, as they are in the service.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from datetime import datetime, timedelta
from typing import Any

from bench.servers import progress
from services.transit.fares import FareEngine, Journey, Leg
from services.transit.feed import DEMO_FEED, Feed, load

_CATEGORIES = (None, "adult", "senior", "student")


def main(options: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="cardless bench fares")
    parser.add_argument("--journeys", type=int, default=20000, help="distinct journeys")
    parser.add_argument("--passes", type=int, default=5, help="timed passes over them")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(options)
    started = time.perf_counter()
    feed = load(DEMO_FEED)
    load_ms = (time.perf_counter() - started) * 1000
    engine = FareEngine(feed)
    progress(f"making {args.journeys} journeys on the demo city's metro")
    journeys = _journeys(feed, args.journeys, random.Random(args.seed))
    rates = [_pass(engine, journeys) for _ in range(args.passes)]
    quotes = [engine.price(j) for j in journeys]
    return {
        "bench": "fares",
        "journeys_per_s": round(max(rates)),
        "median_journeys_per_s": round(statistics.median(rates)),
        "journeys": len(journeys),
        "legs_per_journey": round(sum(len(j.legs) for j in journeys) / len(journeys), 2),
        "unknown_fares": sum(q.amount_minor is None for q in quotes),
        "feed_load_ms": round(load_ms, 1),
    }


def _pass(engine: FareEngine, journeys: list[Journey]) -> float:
    price = engine.price
    start = time.perf_counter()
    for journey in journeys:
        price(journey)
    return len(journeys) / (time.perf_counter() - start)


def _journeys(feed: Feed, count: int, rng: random.Random) -> list[Journey]:
    """Random journeys along the metro's lines, changing at shared stations."""
    lines = _line_platforms(feed)
    stations: dict[str, list[tuple[str, str]]] = {}
    for route_id, platforms in lines.items():
        for platform in platforms:
            stations.setdefault(_station(platform), []).append((route_id, platform))
    day = datetime(2025, 6, 2, 6, 0)
    return [_journey(lines, stations, rng, day) for _ in range(count)]


def _line_platforms(feed: Feed) -> dict[str, list[str]]:
    """Each route's platforms (stop ids ending in -<route>), the demo feed's naming."""
    lines: dict[str, list[str]] = {route_id: [] for route_id in feed.routes}
    for stop_id in feed.stops:
        route_id = stop_id.rpartition("-")[2]
        if route_id in lines:
            lines[route_id].append(stop_id)
    return {route: platforms for route, platforms in lines.items() if platforms}


def _station(platform: str) -> str:
    return platform.rpartition("-")[0]


def _journey(
    lines: dict[str, list[str]], stations: dict[str, list[tuple[str, str]]],
    rng: random.Random, day: datetime,
) -> Journey:  # fmt: skip
    route_id = rng.choice(list(lines))
    here = rng.choice(lines[route_id])
    clock = day + timedelta(seconds=rng.randrange(17 * 3600))
    legs: list[Leg] = []
    wanted = rng.choice((1, 1, 2, 3))
    while len(legs) < wanted:
        others = [p for p in lines[route_id] if p != here]
        interchanges = [p for p in others if len(stations[_station(p)]) > 1]
        last = len(legs) + 1 == wanted or not interchanges
        there = rng.choice(others if last else interchanges)
        arrival = clock + timedelta(minutes=rng.randrange(3, 30))
        legs.append(Leg(route_id, here, there, clock, arrival))
        if last:
            break
        route_id, here = rng.choice([(r, p) for r, p in stations[_station(there)] if r != route_id])
        clock = arrival + timedelta(minutes=rng.randrange(2, 8))
    return Journey(tuple(legs), rng.choice(_CATEGORIES), "qr")
