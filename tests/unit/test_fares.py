"""The fare engine's rules one by one, each on a small feed written for it."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from services.transit.fares import FareEngine, Journey, Leg, Quote
from services.transit.feed import DEMO_FEED, load

BASE = {
    "agency.txt": "agency_id,agency_name,agency_url,agency_timezone\n"
    "a,Agency,https://a.example,Europe/Paris\n",
    "stops.txt": "stop_id,stop_name,location_type,parent_station,stop_timezone\n"
    "s1,One,,,\ns2,Two,,,\ns3,Three,,,\n"
    "hub,Hub,1,,\nhub_a,Hub A,0,hub,\nhub_b,Hub B,0,hub,\n",
    "routes.txt": "route_id,route_type\nbus,3\ntram,0\nmetro,1\n",
    "networks.txt": "network_id\nbus\ntram\nmetro\n",
    "route_networks.txt": "network_id,route_id\nbus,bus\ntram,tram\nmetro,metro\n",
    "fare_products.txt": "fare_product_id,amount,currency\n"
    "A,3.00,EUR\nB,2.00,EUR\nAB,0.50,EUR\nBC,0.25,EUR\ncheap,1.00,EUR\n",
}
MONDAY = datetime(2025, 6, 2, 10, 0)


def feed(tmp_path: Path, **files: str) -> FareEngine:
    """An engine on BASE with ``files`` added or replaced (keyword: the name without .txt)."""
    folder = tmp_path / "feed"
    folder.mkdir(exist_ok=True)
    for name, text in {**BASE, **{f"{k}.txt": v for k, v in files.items()}}.items():
        (folder / name).write_text(text)
    return FareEngine(load(folder))


def ride(route: str = "bus", start: str = "s1", end: str = "s2", at: int = 0, minutes: int = 10,
         day: datetime = MONDAY) -> Leg:  # fmt: skip
    departure = day + timedelta(minutes=at)
    return Leg(route, start, end, departure, departure + timedelta(minutes=minutes))


def price(engine: FareEngine, *legs: Leg, category: str | None = None,
          medium: str | None = None) -> Quote:  # fmt: skip
    return engine.price(Journey(legs, category, medium))


BY_NETWORK = "leg_group_id,network_id,fare_product_id{}\nga,bus,A{}\ngo,,cheap{}\n"


def test_without_rule_priority_an_empty_network_matches_only_networks_no_rule_lists(
    tmp_path: Path,
) -> None:
    engine = feed(tmp_path, fare_leg_rules=BY_NETWORK.format("", "", ""))
    assert price(engine, ride("bus")).products == ("A",)
    assert price(engine, ride("tram")).products == ("cheap",)


def test_with_rule_priority_an_empty_field_matches_anything(tmp_path: Path) -> None:
    engine = feed(tmp_path, fare_leg_rules=BY_NETWORK.format(",rule_priority", ",0", ",0"))
    # Both rules match the bus leg at the same priority: the rider pays the cheaper product.
    assert price(engine, ride("bus")).products == ("cheap",)


def test_the_highest_rule_priority_wins_even_when_dearer(tmp_path: Path) -> None:
    engine = feed(tmp_path, fare_leg_rules=BY_NETWORK.format(",rule_priority", ",1", ","))
    assert price(engine, ride("bus")).products == ("A",)
    assert price(engine, ride("tram")).products == ("cheap",)


AREAS = {
    "areas": "area_id\nz1\nz2\n",
    "stop_areas": "area_id,stop_id\nz1,s1\nz2,s2\nz2,hub\n",
}


def test_an_empty_area_without_rule_priority_excludes_the_listed_areas(tmp_path: Path) -> None:
    rules = "fare_product_id,from_area_id,to_area_id\nA,z1,z2\ncheap,,z2\n"
    engine = feed(tmp_path, fare_leg_rules=rules, **AREAS)
    assert price(engine, ride(start="s1", end="s2")).products == ("A",)
    assert price(engine, ride(start="s3", end="s2")).products == ("cheap",)  # s3: no area


def test_platforms_are_in_their_stations_areas(tmp_path: Path) -> None:
    rules = "fare_product_id,from_area_id,to_area_id\nA,z1,z2\n"
    engine = feed(tmp_path, fare_leg_rules=rules, **AREAS)
    assert price(engine, ride(start="s1", end="hub_a")).products == ("A",)


def test_a_leg_no_rule_matches_has_an_unknown_fare_never_a_free_one(tmp_path: Path) -> None:
    engine = feed(tmp_path, fare_leg_rules="fare_product_id,network_id\nA,bus\n")
    quote = price(engine, ride("tram"))
    assert (quote.amount_minor, quote.products) == (None, ())
    assert "no fare leg rule matches" in (quote.reason or "")


PEAK = {
    "calendar": "service_id,monday,tuesday,wednesday,thursday,friday,saturday,sunday,"
    "start_date,end_date\nweekdays,1,1,1,1,1,0,0,20250101,20251231\n",
    "calendar_dates": "service_id,date,exception_type\nweekdays,20250609,2\n",
    "timeframes": "timeframe_group_id,start_time,end_time,service_id\n"
    "peak,07:00:00,09:00:00,weekdays\n",
    "fare_leg_rules": "fare_product_id,network_id,from_timeframe_group_id,rule_priority\n"
    "A,bus,peak,1\nB,bus,,0\n",
}


@pytest.mark.parametrize(
    ("departure", "product"),
    [("06:59:59", "B"), ("07:00:00", "A"), ("08:59:59", "A"), ("09:00:00", "B")],
)
def test_a_timeframe_includes_its_start_and_excludes_its_end(
    tmp_path: Path, departure: str, product: str
) -> None:
    engine = feed(tmp_path, **PEAK)
    at = datetime.fromisoformat(f"2025-06-02T{departure}")
    assert price(engine, Leg("bus", "s1", "s2", at, at + timedelta(minutes=5))).products == (
        product,
    )


def test_a_timeframe_holds_only_on_its_services_days(tmp_path: Path) -> None:
    engine = feed(tmp_path, **PEAK)
    saturday, holiday = datetime(2025, 6, 7, 8), datetime(2025, 6, 9, 8)  # 9 June: removed
    assert price(engine, ride(day=saturday)).products == ("B",)
    assert price(engine, ride(day=holiday)).products == ("B",)
    assert price(engine, ride(day=datetime(2025, 6, 10, 8))).products == ("A",)


def test_a_timeframe_is_read_in_the_stops_own_time_zone(tmp_path: Path) -> None:
    stops = BASE["stops.txt"] + "lisbon,Lisbon,,,Europe/Lisbon\n"
    engine = feed(tmp_path, stops=stops, **PEAK)
    # 09:30 in Paris is 08:30 in Lisbon: still the peak there.
    assert price(engine, ride(start="lisbon", day=datetime(2025, 6, 2, 9, 30))).products == ("A",)
    assert price(engine, ride(start="s1", day=datetime(2025, 6, 2, 9, 30))).products == ("B",)


def test_a_time_at_the_calendars_very_start_gives_an_unknown_fare(tmp_path: Path) -> None:
    stops = BASE["stops.txt"] + "lisbon,Lisbon,,,Europe/Lisbon\n"
    engine = feed(tmp_path, stops=stops, **PEAK)
    quote = price(engine, ride(start="lisbon", day=datetime(1, 1, 1, 0, 5)))
    assert quote == Quote(None, None, (), "a leg's time is out of the calendar's range")


GROUPS = "leg_group_id,network_id,fare_product_id\nga,bus,A\ngb,tram,B\ngc,metro,B\n"
TRANSFER_HEADER = "from_leg_group_id,to_leg_group_id,transfer_count,duration_limit,"
TRANSFER_HEADER += "duration_limit_type,fare_transfer_type,fare_product_id\n"


@pytest.mark.parametrize(("kind", "total", "products"), [
    (0, 350, ("A", "AB")),  # A + AB
    (1, 550, ("A", "AB", "B")),  # A + AB + B
    (2, 50, ("AB",)),  # AB
])  # fmt: skip
def test_fare_transfer_type_sets_what_the_transfer_costs(
    tmp_path: Path, kind: int, total: int, products: tuple[str, ...]
) -> None:
    rules = TRANSFER_HEADER + f"ga,gb,,,,{kind},AB\n"
    engine = feed(tmp_path, fare_leg_rules=GROUPS, fare_transfer_rules=rules)
    quote = price(engine, ride("bus"), ride("tram", "s2", "s3", at=20))
    assert (quote.amount_minor, quote.products) == (total, products)


def test_a_second_transfer_adds_to_the_total_so_far(tmp_path: Path) -> None:
    rules = TRANSFER_HEADER + "ga,gb,,,,2,AB\ngb,gc,,,,2,BC\n"
    engine = feed(tmp_path, fare_leg_rules=GROUPS, fare_transfer_rules=rules)
    legs = ride("bus"), ride("tram", "s2", "s3", at=20), ride("metro", "s3", "s1", at=40)
    quote = price(engine, *legs)
    assert (quote.amount_minor, quote.products) == (75, ("AB", "BC"))  # AB, then S + BC


def test_transfer_rules_are_directional(tmp_path: Path) -> None:
    rules = TRANSFER_HEADER + "ga,gb,,,,0,\n"
    engine = feed(tmp_path, fare_leg_rules=GROUPS, fare_transfer_rules=rules)
    assert price(engine, ride("bus"), ride("tram", "s2", "s3", at=20)).amount_minor == 300
    assert price(engine, ride("tram"), ride("bus", "s2", "s3", at=20)).amount_minor == 500


def test_an_empty_leg_group_in_a_transfer_rule_matches_only_groups_no_rule_lists(
    tmp_path: Path,
) -> None:
    rules = TRANSFER_HEADER + ",gb,,,,0,\ngc,gb,,,,0,AB\n"
    engine = feed(tmp_path, fare_leg_rules=GROUPS, fare_transfer_rules=rules)
    assert price(engine, ride("bus"), ride("tram", "s2", "s3", at=20)).amount_minor == 300
    assert price(engine, ride("metro"), ride("tram", "s2", "s3", at=20)).amount_minor == 250


def test_the_transfer_window_counts_from_the_first_leg(tmp_path: Path) -> None:
    rules = TRANSFER_HEADER + "ga,ga,-1,3600,1,0,\n"
    engine = feed(tmp_path, fare_leg_rules=GROUPS, fare_transfer_rules=rules)
    within = ride(at=0), ride(at=25), ride(at=50)
    assert price(engine, *within).amount_minor == 300
    # The third leg is 35 minutes after the second but 70 after the first: a new fare.
    late = ride(at=0), ride(at=35), ride(at=70)
    assert price(engine, *late).products == ("A", "A")


@pytest.mark.parametrize(("kind", "minutes", "free"), [
    (0, 60, True), (0, 59, False),  # first departure 0 -> last arrival 60
    (1, 50, True), (1, 49, False),  # first departure 0 -> last departure 50
    (2, 40, True), (2, 39, False),  # first arrival 10 -> last departure 50
    (3, 50, True), (3, 49, False),  # first arrival 10 -> last arrival 60
])  # fmt: skip
def test_duration_limit_type_says_which_events_the_window_spans(
    tmp_path: Path, kind: int, minutes: int, free: bool
) -> None:
    rules = TRANSFER_HEADER + f"ga,ga,-1,{minutes * 60},{kind},0,\n"
    engine = feed(tmp_path, fare_leg_rules=GROUPS, fare_transfer_rules=rules)
    quote = price(engine, ride(at=0, minutes=10), ride(at=50, minutes=10))
    assert quote.amount_minor == (300 if free else 600)


def test_the_transfer_window_is_real_time_across_a_clock_change(tmp_path: Path) -> None:
    rules = TRANSFER_HEADER + "ga,ga,-1,3600,1,0,\n"
    engine = feed(tmp_path, fare_leg_rules=GROUPS, fare_transfer_rules=rules)
    # Paris, 30 March 2025: 01:50 then 03:40 on the clock is 50 minutes of real time.
    first = Leg("bus", "s1", "s2", datetime(2025, 3, 30, 1, 50), datetime(2025, 3, 30, 1, 55))
    second = Leg("bus", "s2", "s1", datetime(2025, 3, 30, 3, 40), datetime(2025, 3, 30, 3, 50))
    assert price(engine, first, second).amount_minor == 300


def test_transfer_count_limits_the_transfers_of_a_sub_journey(tmp_path: Path) -> None:
    rules = TRANSFER_HEADER + "ga,ga,1,,,0,\n"
    engine = feed(tmp_path, fare_leg_rules=GROUPS, fare_transfer_rules=rules)
    quote = price(engine, ride(at=0), ride(at=20), ride(at=40))
    assert quote.products == ("A", "A")  # the second transfer starts a new fare


def test_the_smallest_transfer_count_that_covers_the_transfer_is_used(tmp_path: Path) -> None:
    rules = TRANSFER_HEADER + "ga,ga,1,,,0,AB\nga,ga,2,,,0,BC\n"
    engine = feed(tmp_path, fare_leg_rules=GROUPS, fare_transfer_rules=rules)
    quote = price(engine, ride(at=0), ride(at=20), ride(at=40))
    assert quote.products == ("A", "AB", "BC")


JOIN = "from_network_id,to_network_id,from_stop_id,to_stop_id\n"
ONE_FARE = "leg_group_id,network_id,fare_product_id\nm,metro,A\n"


def test_legs_of_one_network_at_one_station_join_into_one_fare_leg(tmp_path: Path) -> None:
    engine = feed(tmp_path, fare_leg_rules=ONE_FARE, fare_leg_join_rules=JOIN + "metro,metro,,\n")
    same_station = ride("metro", "s1", "hub_a"), ride("metro", "hub_b", "s2", at=15)
    assert price(engine, *same_station).products == ("A",)
    elsewhere = ride("metro", "s1", "s2"), ride("metro", "s3", "s1", at=15)
    assert price(engine, *elsewhere).products == ("A", "A")


def test_a_join_rule_naming_stops_joins_only_there(tmp_path: Path) -> None:
    engine = feed(tmp_path, fare_leg_rules=ONE_FARE,
                  fare_leg_join_rules=JOIN + "metro,metro,s2,s3\n")  # fmt: skip
    there = ride("metro", "s1", "s2"), ride("metro", "s3", "s1", at=15)
    assert price(engine, *there).products == ("A",)
    same_station = ride("metro", "s1", "hub_a"), ride("metro", "hub_b", "s2", at=15)
    assert price(engine, *same_station).products == ("A", "A")


def test_a_joined_leg_is_matched_from_its_first_stop_to_its_last(tmp_path: Path) -> None:
    rules = "network_id,from_area_id,to_area_id,fare_product_id\nmetro,z1,z2,A\nmetro,z1,z1,B\n"
    areas = {"areas": "area_id\nz1\nz2\n", "stop_areas": "area_id,stop_id\nz1,s1\nz1,hub\nz2,s2\n"}
    engine = feed(tmp_path, fare_leg_rules=rules,
                  fare_leg_join_rules=JOIN + "metro,metro,,\n", **areas)  # fmt: skip
    quote = price(engine, ride("metro", "s1", "hub_a"), ride("metro", "hub_b", "s2", at=15))
    assert quote.products == ("A",)


CATEGORIES = {
    "rider_categories": "rider_category_id,rider_category_name,is_default_fare_category\n"
    "adult,Adult,1\nchild,Child,0\nsenior,Senior,\n",
    "fare_media": "fare_media_id,fare_media_name,fare_media_type\ncard,Card,2\napp,App,4\n",
    "fare_products": "fare_product_id,rider_category_id,fare_media_id,amount,currency\n"
    "P,adult,card,3.00,EUR\nP,child,card,1.50,EUR\nP,,app,2.50,EUR\nP,adult,,4.00,EUR\n",
    "fare_leg_rules": "fare_product_id\nP\n",
}


@pytest.mark.parametrize(("category", "medium", "amount"), [
    (None, "card", 300),  # the default category: adult
    ("child", "card", 150),
    ("child", "app", 250),  # a row with no category is for every category
    ("adult", None, 400),  # no medium: only the rows with no medium
    ("adult", "app", 250),
])  # fmt: skip
def test_the_rider_pays_the_row_for_their_category_and_medium(
    tmp_path: Path, category: str | None, medium: str | None, amount: int
) -> None:
    engine = feed(tmp_path, **CATEGORIES)
    assert price(engine, ride(), category=category, medium=medium).amount_minor == amount


def test_a_rider_with_no_row_of_the_product_has_an_unknown_fare(tmp_path: Path) -> None:
    engine = feed(tmp_path, **CATEGORIES)
    quote = price(engine, ride(), category="senior", medium="card")
    assert quote.amount_minor is None
    assert quote.reason == (
        "no row of fare product P for 'senior' rider category with fare media 'card'"
    )


@pytest.mark.parametrize(("category", "medium", "reason"), [
    ("pilot", "card", "unknown rider category 'pilot'"),
    ("adult", "coin", "unknown fare media 'coin'"),
])  # fmt: skip
def test_unknown_categories_and_media_give_an_unknown_fare(
    tmp_path: Path, category: str, medium: str, reason: str
) -> None:
    engine = feed(tmp_path, **CATEGORIES)
    assert price(engine, ride(), category=category, medium=medium) == Quote(None, None, (), reason)


def test_a_journey_in_two_currencies_has_an_unknown_fare(tmp_path: Path) -> None:
    products = BASE["fare_products.txt"] + "CH,4.00,CHF\n"
    rules = "leg_group_id,network_id,fare_product_id\nga,bus,A\ngb,tram,CH\n"
    engine = feed(tmp_path, fare_products=products, fare_leg_rules=rules)
    quote = price(engine, ride("bus"), ride("tram", "s2", "s3", at=20))
    assert quote.amount_minor is None
    assert "several currencies" in (quote.reason or "")


def test_amounts_add_up_exactly_in_minor_units(tmp_path: Path) -> None:
    products = "fare_product_id,amount,currency\nP,0.10,USD\nQ,0.2,USD\nY,210,JPY\n"
    rules = "leg_group_id,network_id,fare_product_id\nga,bus,P\ngb,tram,Q\ngc,metro,Y\n"
    engine = feed(tmp_path, fare_products=products, fare_leg_rules=rules)
    assert price(engine, ride("bus"), ride("tram", "s2", "s3", at=20)).amount_minor == 30
    assert price(engine, ride("metro")) == Quote(210, "JPY", ("Y",), None)


@pytest.mark.parametrize(("legs", "reason"), [
    ((), "a journey needs at least one leg"),
    ((ride("ferry"),), "leg 1: unknown route 'ferry'"),
    ((ride(end="nowhere"),), "leg 1: unknown stop 'nowhere'"),
    ((ride(minutes=-5),), "leg 1: arrives before it departs"),
    ((ride(at=30), ride(at=0)), "leg 2 departs before leg 1 arrives"),
])  # fmt: skip
def test_bad_legs_give_an_unknown_fare_with_the_reason(
    tmp_path: Path, legs: tuple[Leg, ...], reason: str
) -> None:
    engine = feed(tmp_path, fare_leg_rules=GROUPS)
    assert engine.price(Journey(legs)) == Quote(None, None, (), reason)


V1 = {
    "stops": "stop_id,stop_name,zone_id\ns1,One,z1\ns2,Two,z2\ns3,Three,z1\n",
    "fare_attributes": "fare_id,price,currency_type,payment_method,transfers,transfer_duration\n"
    "local,1.50,USD,0,0,\nexpress,4.00,USD,1,1,3600\nday,5.00,USD,1,,\n",
    "fare_rules": "fare_id,route_id,origin_id,destination_id\nlocal,bus,,\nexpress,bus,,\n"
    "express,tram,,\nday,,,\n",
}


def without_v2(tmp_path: Path, **files: str) -> FareEngine:
    folder = tmp_path / "feed"
    folder.mkdir()
    base = {k: v for k, v in BASE.items() if k != "fare_products.txt"}
    for name, text in {**base, **{f"{k}.txt": v for k, v in files.items()}}.items():
        (folder / name).write_text(text)
    return FareEngine(load(folder))


def test_a_feed_without_v2_files_is_priced_by_fares_v1(tmp_path: Path) -> None:
    engine = without_v2(tmp_path, **V1)
    assert price(engine, ride("bus")) == Quote(150, "USD", ("local",), None)
    # bus then tram within the hour: one express fare (one transfer) beats local + day.
    assert price(engine, ride("bus"), ride("tram", at=30)) == Quote(400, "USD", ("express",), None)
    assert price(engine, ride("bus"), ride("tram", at=90)).products == ("day",)


def test_fares_v1_matches_origin_and_destination_zones(tmp_path: Path) -> None:
    attributes = "fare_id,price,currency_type,payment_method,transfers\n"
    attributes += "inner,1.00,USD,0,0\nouter,2.00,USD,0,0\n"
    rules = "fare_id,origin_id,destination_id\ninner,z1,z1\nouter,z1,z2\n"
    engine = without_v2(tmp_path, stops=V1["stops"], fare_attributes=attributes, fare_rules=rules)
    assert price(engine, ride(start="s1", end="s3")).products == ("inner",)
    assert price(engine, ride(start="s1", end="s2")).products == ("outer",)
    assert price(engine, ride(start="s2", end="s1")).amount_minor is None


def test_fares_v1_is_ignored_when_the_feed_has_v2_files(tmp_path: Path) -> None:
    engine = feed(tmp_path, fare_leg_rules=GROUPS, **V1)
    assert price(engine, ride("bus")).products == ("A",)


def test_a_feed_without_fare_files_gives_unknown_fares(tmp_path: Path) -> None:
    engine = without_v2(tmp_path)
    assert price(engine, ride()) == Quote(None, None, (), "the feed has no fare data")


class TestDemoCity:
    """The demo city's metro: zone fares in CNY, one fare for a change of line."""

    engine = FareEngine(load(DEMO_FEED))
    at = datetime(2025, 6, 2, 8, 0)

    def quote(self, *legs: tuple[str, str, str], category: str | None = None,
              medium: str | None = "qr") -> Quote:  # fmt: skip
        journey = tuple(
            Leg(route, start, end, self.at + timedelta(minutes=20 * n),
                self.at + timedelta(minutes=20 * n + 15))
            for n, (route, start, end) in enumerate(legs)
        )  # fmt: skip
        return self.engine.price(Journey(journey, category, medium))

    def test_the_fare_rises_with_the_zones_crossed(self) -> None:
        fares = [self.quote(("L1", "WG", end)).amount_minor for end in ("OT", "MU", "ST", "ES")]
        assert fares == [200, 300, 400, 500]

    def test_a_change_of_line_inside_the_paid_area_is_one_fare(self) -> None:
        quote = self.quote(("L1", "WG-L1", "CE-L1"), ("L3", "CE-L3", "HB-L3"))
        assert quote == Quote(400, "CNY", ("zones_3",), None)  # Z1 -> Z3

    def test_seniors_ride_free_and_students_pay_half(self) -> None:
        assert self.quote(("L1", "WG", "ES"), category="senior").amount_minor == 0
        assert self.quote(("L1", "WG", "ES"), category="student").amount_minor == 250

    def test_concessions_need_the_phone_not_a_token(self) -> None:
        assert self.quote(("L1", "WG", "ES"), medium="token").amount_minor == 500
        assert self.quote(("L1", "WG", "ES"), category="student", medium="token").reason == (
            "no row of fare product zones_4 for 'student' rider category with fare media 'token'"
        )
