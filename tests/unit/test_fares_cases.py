"""The README's worked cases (tests/data/gtfs-fares-v2/README.md), each its own test.

``cases.json`` beside the README holds them as data: one entry per README row, with the
journey, the README's figure, and the engine's expected answer. The first tests hold the case
file to the README (same ids, same origins, the same figures where the engine agrees, a reason
from the adopted spec wherever it does not); the last one prices every case.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from services.transit.fares import FareEngine
from services.transit.feed import FeedError, load, parse_amount
from services.transit.quote import parse_journey

DATA = Path(__file__).parents[1] / "data" / "gtfs-fares-v2"
CASES: dict[str, Any] = json.loads((DATA / "cases.json").read_text(encoding="utf-8"))
FARE_FILES = (
    "fare_media.txt", "fare_products.txt", "fare_leg_rules.txt", "fare_leg_join_rules.txt",
    "fare_transfer_rules.txt", "rider_categories.txt", "timeframes.txt", "areas.txt",
    "stop_areas.txt", "networks.txt", "route_networks.txt",
)  # fmt: skip


def readme_rows() -> dict[str, tuple[str, str]]:
    """Each worked case of the README: id -> (expected column, origin)."""
    rows = {}
    for line in (DATA / "README.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 6 and re.fullmatch(r"[A-Z][0-9]+", cells[0]):
            origin = re.match(r"\w+", cells[-1])
            assert origin, line
            rows[cells[0]] = (cells[-3], origin.group())
    return rows


def checks() -> list[Any]:
    return [
        pytest.param(case, check, id=f"{case['id']}-{check['label']}")
        for case in CASES["cases"]
        for check in case["checks"]
    ]


def test_the_case_file_has_every_readme_case_with_its_origin() -> None:
    readme = readme_rows()
    ours = {case["id"]: case["origin"] for case in CASES["cases"]}
    assert ours == {case_id: origin for case_id, (_, origin) in readme.items()}
    assert len(readme) == 56  # "56 cases in all", the README says
    assert sorted(ours.values()).count("source") == 41


@pytest.mark.parametrize(("case", "check"), checks())
def test_each_figure_is_the_readmes_or_a_departure_is_explained(
    case: dict[str, Any], check: dict[str, Any]
) -> None:
    expected_column, _ = readme_rows()[case["id"]]
    assert check["readme"] in expected_column
    expect = check["expect"]
    agrees = "feed_error" not in expect and (
        expect["amount"] is None or check["readme"].startswith(expect["amount"])
    )
    assert check["follows_readme"] == agrees
    assert agrees or len(check.get("departure", "")) > 40


@pytest.fixture(scope="module")
def feeds(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str | None], Path]:
    """Each case's feed folder: the copy as it is, or completed, or without its fare files."""
    folders: dict[tuple[str, str | None], Path] = {}
    for case in CASES["cases"]:
        key = (case["feed"], case.get("variant"))
        if key not in folders:
            folders[key] = _materialise(case["feed"], key[1], tmp_path_factory)
    return folders


def _materialise(feed: str, variant: str | None, factory: pytest.TempPathFactory) -> Path:
    completions: dict[str, str] = CASES["completions"].get(feed, {})
    if not completions and variant is None:
        return DATA / feed
    folder = factory.mktemp(feed.replace("/", "-")) / "feed"
    shutil.copytree(DATA / feed, folder)
    for name, text in completions.items():
        assert not (folder / name).exists(), f"a completion never replaces {feed}/{name}"
        (folder / name).write_text(text, encoding="utf-8")
    if variant == "without-fare-files":
        for name in FARE_FILES:
            (folder / name).unlink(missing_ok=True)
    return folder


@pytest.mark.parametrize(("case", "check"), checks())
def test_case(
    case: dict[str, Any], check: dict[str, Any], feeds: dict[tuple[str, str | None], Path]
) -> None:
    folder, expect = feeds[(case["feed"], case.get("variant"))], check["expect"]
    if "feed_error" in expect:
        with pytest.raises(FeedError) as refused:
            load(folder)
        found = [f"{p.file}:{p.line} {p.field}" for p in refused.value.problems]
        assert found == expect["feed_error"]
        return
    quote = FareEngine(load(folder)).price(parse_journey(json.dumps(check["journey"])))
    if expect["amount"] is None:
        assert (quote.amount_minor, quote.products) == (None, ())
        assert quote.reason == expect["reason"]
        return
    amount = parse_amount(expect["amount"], expect["currency"])
    assert (quote.amount_minor, quote.currency, quote.reason) == (amount, expect["currency"], None)
    assert list(quote.products) == expect["products"]
