"""``cardless fares quote``: journeys in as JSON lines, one fare line out per journey, in order."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from services.transit.feed import DEMO_FEED
from services.transit.quote import quote


def journey(*legs: tuple[str, str, str], category: str | None = None,
            medium: str | None = "qr", at: str = "2025-06-02T08") -> str:  # fmt: skip
    return json.dumps({
        "legs": [
            {"route_id": route, "from_stop_id": start, "to_stop_id": end,
             "departure": f"{at}:{10 * n:02d}:00", "arrival": f"{at}:{10 * n + 8:02d}:00"}
            for n, (route, start, end) in enumerate(legs)
        ],
        "rider_category_id": category,
        "fare_media_id": medium,
    })  # fmt: skip


def run(lines: list[str], feed: Path = DEMO_FEED) -> tuple[int, list[dict[str, Any]]]:
    out = io.StringIO()
    code = quote(feed, lines, out)
    return code, [json.loads(line) for line in out.getvalue().splitlines()]


def test_each_journey_gets_its_fare_in_order() -> None:
    code, answers = run([
        journey(("L1", "WG", "OT")),
        journey(("L1", "WG-L1", "CE-L1"), ("L3", "CE-L3", "HB-L3"), category="student"),
        journey(("L2", "ZO", "SP"), category="senior"),
    ])  # fmt: skip
    assert code == 0
    assert answers == [
        {"amount_minor": 200, "currency": "CNY", "products": ["zones_1"], "reason": None},
        {"amount_minor": 200, "currency": "CNY", "products": ["zones_3"], "reason": None},
        {"amount_minor": 0, "currency": "CNY", "products": ["zones_2"], "reason": None},
    ]


def test_an_unknown_fare_is_an_answer_with_its_reason() -> None:
    code, answers = run([journey(("L9", "WG", "OT")), journey(("L1", "WG", "OT"), medium=None)])
    assert code == 0
    assert [a["amount_minor"] for a in answers] == [None, None]
    assert answers[0]["reason"] == "leg 1: unknown route 'L9'"
    assert answers[1]["reason"] == (
        "no row of fare product zones_1 for the default rider category with no fare media"
    )


@pytest.mark.parametrize(("line", "reason"), [
    ("not json", "line 2: JSON is malformed"),
    ('{"legs": "WG"}', "line 2: Expected `array`, got `str` - at `$.legs`"),
    ('{"legs": [], "rider": "adult"}', "line 2: Object contains unknown field `rider`"),
    (journey(("L1", "WG", "OT")).replace(":00:00", ":00:00+08:00"),
     "line 2: legs[0].departure: '2025-06-02T08:00:00+08:00' has an offset; give the agency's "
     "local time"),
    (journey(("L1", "WG", "OT")).replace("2025-06-02T08:00:00", "2025-06-02"),
     "line 2: legs[0].departure: '2025-06-02' is not an ISO 8601 date and time"),
    (journey(("L1", "WG", "OT")).replace("2025-06-02T08:00:00", "soon"),
     "line 2: legs[0].departure: 'soon' is not an ISO 8601 date and time"),
])  # fmt: skip
def test_a_bad_line_gets_its_own_answer_and_the_rest_go_on(line: str, reason: str) -> None:
    code, answers = run([journey(("L1", "WG", "OT")), line, journey(("L1", "WG", "MU"))])
    assert code == 1
    assert [a["amount_minor"] for a in answers] == [200, None, 300]
    assert answers[1]["reason"].startswith(reason)
    assert (answers[1]["currency"], answers[1]["products"]) == (None, [])


def test_blank_lines_are_skipped() -> None:
    code, answers = run(["\n", journey(("L1", "WG", "OT")) + "\n", "   \n"])
    assert (code, len(answers)) == (0, 1)


def test_a_broken_feed_exits_2_and_names_its_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "agency.txt").write_text("agency_id,agency_timezone\na,Asia/Shanghai\n")
    code, answers = run([journey(("L1", "WG", "OT"))], feed=tmp_path)
    assert (code, answers) == (2, [])
    assert "stops.txt:0 : required file is missing" in capsys.readouterr().err


def test_cardless_fares_quote_prices_with_the_demo_metro_by_default(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from shared import cli

    leg = {"route_id": "L1", "from_stop_id": "WG", "to_stop_id": "OT",
           "departure": "2026-11-25T08:00:00", "arrival": "2026-11-25T08:20:00"}  # fmt: skip
    line = json.dumps({"legs": [leg], "rider_category_id": "student", "fare_media_id": "qr"})
    monkeypatch.setattr("sys.stdin", io.StringIO(line + "\n"))
    assert cli.main(["fares", "quote"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert (answer["amount_minor"], answer["currency"]) == (100, "CNY")
