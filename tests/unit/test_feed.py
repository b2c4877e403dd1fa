"""Loading a GTFS feed: folders and zips, and every problem named by file, line and field."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from services.transit.feed import DEMO_FEED, FeedError, Problem, load, parse_amount

FARES = Path(__file__).parents[1] / "data" / "gtfs-fares-v2"
BASE = {
    "agency.txt": "agency_id,agency_name,agency_url,agency_timezone\n"
    "a,Agency,https://a.example,Asia/Shanghai\n",
    "stops.txt": "stop_id,stop_name,location_type,parent_station\n"
    "s1,One,,\nst,Station,1,\np1,Platform 1,0,st\np2,Platform 2,0,st\n",
    "routes.txt": "route_id,route_type\nr1,1\nr2,1\n",
    "networks.txt": "network_id\nmetro\n",
    "route_networks.txt": "network_id,route_id\nmetro,r1\n",
    "fare_products.txt": "fare_product_id,amount,currency\nP,2.00,CNY\n",
    "fare_leg_rules.txt": "leg_group_id,fare_product_id\ng,P\n",
}


def write(tmp_path: Path, **files: str) -> Path:
    """BASE with ``files`` added or replaced (keyword: the name without .txt; '' removes)."""
    folder = tmp_path / "feed"
    folder.mkdir(exist_ok=True)
    for name, text in {**BASE, **{f"{k}.txt": v for k, v in files.items()}}.items():
        if text:
            (folder / name).write_text(text, encoding="utf-8")
    return folder


def problems(tmp_path: Path, **files: str) -> list[str]:
    with pytest.raises(FeedError) as refused:
        load(write(tmp_path, **files))
    return [str(p) for p in refused.value.problems]


def warnings(tmp_path: Path, **files: str) -> list[str]:
    return [str(w) for w in load(write(tmp_path, **files)).warnings]


def test_a_feed_loads_from_a_folder_or_a_zip(tmp_path: Path) -> None:
    folder = load(DEMO_FEED)
    flat, nested = tmp_path / "flat.zip", tmp_path / "nested.zip"
    with zipfile.ZipFile(flat, "w") as one, zipfile.ZipFile(nested, "w") as other:
        for file in DEMO_FEED.iterdir():
            one.write(file, file.name)
            other.write(file, f"gtfs/{file.name}")
    for archive in (flat, nested):
        feed = load(archive)
        assert (feed.stops, feed.products, feed.leg_rules) == (
            folder.stops,
            folder.products,
            folder.leg_rules,
        )


def test_the_demo_feed_is_clean() -> None:
    feed = load(DEMO_FEED)
    assert (feed.fares, feed.warnings, feed.timezone.key) == ("v2", (), "Asia/Shanghai")
    assert len({s.station for s in feed.stops.values()}) == 25


def test_neither_a_folder_nor_a_zip_is_refused(tmp_path: Path) -> None:
    (tmp_path / "feed.txt").write_text("hello")
    with pytest.raises(FeedError, match="neither a folder nor a zip"):
        load(tmp_path / "feed.txt")


def test_the_error_names_every_problem(tmp_path: Path) -> None:
    with pytest.raises(FeedError) as refused:
        load(write(tmp_path, agency="", stops=""))
    assert refused.value.problems == (
        Problem("agency.txt", 0, "", "required file is missing"),
        Problem("stops.txt", 0, "", "required file is missing"),
    )
    assert "agency.txt:0" in str(refused.value)
    assert "stops.txt:0" in str(refused.value)


@pytest.mark.parametrize(("files", "problem"), [
    ({"fare_products": "fare_product_id,amount,currency\nP,2.00,CNY\nQ,1.005,USD\n"},
     "fare_products.txt:3 amount: '1.005' is not an amount in USD with at most 2 decimals"),
    ({"fare_products": "fare_product_id,amount,currency\nP,2.00,RMB\n"},
     "fare_products.txt:2 currency: 'RMB' is not an ISO 4217 currency code"),
    ({"fare_products": "fare_product_id,amount,currency\nP,,CNY\n"},
     "fare_products.txt:2 amount: required value is empty"),
    ({"fare_products": "fare_product_id,amount,currency\nP,2.00,CNY\nP,3.00,CNY\n"},
     "fare_products.txt:3 fare_product_id: repeats line 2"),
    ({"fare_products": "fare_product_id,amount,currency,rider_category_id\nP,2.00,CNY,kid\n"},
     "fare_products.txt:2 rider_category_id: no rider category 'kid'"),
    ({"fare_products": "fare_product_id,amount\nP,2.00\n"},
     "fare_products.txt:1 currency: required column is missing"),
    ({"fare_leg_rules": "fare_product_id,network_id\nP,metro\nQ,metro\n"},
     "fare_leg_rules.txt:3 fare_product_id: no fare product 'Q'"),
    ({"fare_leg_rules": "fare_product_id,network_id\nP,tram\n"},
     "fare_leg_rules.txt:2 network_id: no network 'tram'"),
    ({"fare_leg_rules": "fare_product_id,rule_priority\nP,-1\n"},
     "fare_leg_rules.txt:2 rule_priority: -1 is not at least 0"),
    ({"fare_leg_rules": "leg_group_id,fare_product_id\na,P\nb,P\n"},
     "fare_leg_rules.txt:3 fare_product_id: repeats the rule of line 2"),
    ({"fare_transfer_rules": "from_leg_group_id,to_leg_group_id,fare_transfer_type\ng,g,0\n"},
     "fare_transfer_rules.txt:2 transfer_count: required when the two leg groups are equal"),
    ({"fare_transfer_rules": "from_leg_group_id,to_leg_group_id,fare_transfer_type\ng,h,0\n"},
     "fare_transfer_rules.txt:2 to_leg_group_id: no leg group 'h' in fare_leg_rules.txt"),
    ({"fare_transfer_rules": "from_leg_group_id,duration_limit,fare_transfer_type\ng,600,0\n"},
     "fare_transfer_rules.txt:2 duration_limit_type: required with a duration_limit"),
    ({"fare_transfer_rules": "from_leg_group_id,fare_transfer_type\ng,3\n"},
     "fare_transfer_rules.txt:2 fare_transfer_type: 3 is not one of [0, 1, 2]"),
    ({"timeframes": "timeframe_group_id,start_time,end_time,service_id\nt,08:00:00,25:00:00,x\n"},
     "timeframes.txt:2 end_time: '25:00:00' is after 24:00:00"),
    ({"timeframes": "timeframe_group_id,start_time,end_time,service_id\nt,08:00:00,,x\n"},
     "timeframes.txt:2 end_time: required when the other time is given"),
    ({"timeframes": "timeframe_group_id,start_time,end_time,service_id\nt,,,x\n"},
     "timeframes.txt:2 service_id: no service 'x' in the calendar"),
    ({"route_networks": "network_id,route_id\nmetro,r1\nmetro,r1\n"},
     "route_networks.txt:3 route_id: route 'r1' is in two networks"),
    ({"fare_leg_join_rules": "from_network_id,to_network_id,from_stop_id\nmetro,metro,p1\n"},
     "fare_leg_join_rules.txt:2 to_stop_id: from_stop_id and to_stop_id go together"),
    ({"stop_areas": "area_id,stop_id\nz1,s1\n"},
     "stop_areas.txt:2 area_id: no area 'z1' in areas.txt"),
    ({"agency": "agency_id,agency_name,agency_url,agency_timezone\na,A,https://a,Mars/Base\n"},
     "agency.txt:2 agency_timezone: 'Mars/Base' is not an IANA time zone"),
    ({"stops": "stop_id,stop_name,parent_station\ns1,One,nowhere\n"},
     "stops.txt:2 parent_station: no stop 'nowhere'"),
    ({"fare_caps": "rider_category_id,cap_period,amount,currency\nkid,day,5.00,CNY\n"},
     "fare_caps.txt:2 rider_category_id: no rider category 'kid'"),
    ({"rider_categories": "rider_category_id,rider_category_name,is_default_fare_category\n"
                          "adult,Adult,1\n",
      "fare_caps": "rider_category_id,cap_period,amount,currency\nadult,month,5.00,CNY\n"},
     "fare_caps.txt:2 cap_period: 'month' is not one of day, week"),
    ({"rider_categories": "rider_category_id,rider_category_name,is_default_fare_category\n"
                          "adult,Adult,1\n",
      "fare_caps": "rider_category_id,cap_period,amount,currency\nadult,day,5.001,CNY\n"},
     "fare_caps.txt:2 amount: '5.001' is not an amount in CNY"),
    ({"rider_categories": "rider_category_id,rider_category_name,is_default_fare_category\n"
                          "adult,Adult,1\n",
      "fare_caps": "rider_category_id,cap_period,amount,currency\n"
                   "adult,day,5.00,CNY\nadult,day,6.00,CNY\n"},
     "fare_caps.txt:3 cap_period: a second day cap for 'adult'"),
])  # fmt: skip
def test_each_error_names_its_file_line_and_field(
    tmp_path: Path, files: dict[str, str], problem: str
) -> None:
    assert any(found.startswith(problem) for found in problems(tmp_path, **files))


def test_line_numbers_count_the_files_lines(tmp_path: Path) -> None:
    text = 'fare_product_id,fare_product_name,amount,currency\nP,"Single, one zone",2.00,CNY\n'
    text += "\nQ,Quoted,x,CNY\n"
    assert problems(tmp_path, fare_products=text) == [
        "fare_products.txt:4 amount: 'x' is not an amount in CNY with at most 2 decimals"
    ]


def test_a_byte_order_mark_and_crlf_line_ends_are_read(tmp_path: Path) -> None:
    folder = write(tmp_path)
    text = "\ufefffare_product_id,amount,currency\r\nP,2.50,CNY\r\n"
    (folder / "fare_products.txt").write_text(text, encoding="utf-8", newline="")
    assert load(folder).products["P"][0].amount_minor == 250


def test_text_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    folder = write(tmp_path)
    (folder / "areas.txt").write_bytes(b"area_id,area_name\nz1,Z\xfcrich\n")
    with pytest.raises(FeedError, match=r"areas\.txt:0 : not UTF-8"):
        load(folder)


@pytest.mark.parametrize(("files", "warning"), [
    ({"fare_transfer_rules": "from_leg_group_id,to_leg_group_id,transfer_count,"
      "fare_transfer_type\ng,,1,0\n"},
     "fare_transfer_rules.txt:2 transfer_count: forbidden when the two leg groups differ; ignored"),
    ({"networks": "network_id\nmetro\ntram\n",
      "fare_leg_join_rules": "from_network_id,to_network_id\nmetro,tram\n"},
     "fare_leg_join_rules.txt:2 to_network_id: differs from from_network_id 'metro'; ignored "
     "(the spec joins legs of one network only)"),
    ({"fare_leg_rules": "leg_group_id,fare_product_id,min_distance\ng,P,5\n"},
     "fare_leg_rules.txt:1 min_distance: not in the adopted GTFS spec; ignored"),
    ({"area_set_elements": "area_set_id,area_id\nx,y\n"},
     "area_set_elements.txt:0 : experimental, not in the adopted GTFS spec; ignored"),
    ({"fare_attributes": "fare_id,price,currency_type,payment_method,transfers\nf,1.00,CNY,0,\n"},
     "fare_attributes.txt:0 : ignored: the feed has Fares v2 files"),
    ({"rider_categories": "rider_category_id,rider_category_name,is_default_fare_category\n"
      "kid,Kid,0\nsenior,Senior,0\n",
      "fare_products": "fare_product_id,amount,currency,rider_category_id\n"
      "P,1.00,CNY,kid\nP,1.00,CNY,senior\n"},
     "fare_products.txt:0 rider_category_id: 'P': 0 default categories among ['kid', 'senior'], "
     "the spec wants exactly one"),
])  # fmt: skip
def test_breaches_the_spec_makes_inert_are_warnings(
    tmp_path: Path, files: dict[str, str], warning: str
) -> None:
    assert warning in warnings(tmp_path, **files)


def test_a_platform_is_in_its_stations_areas_unless_it_has_its_own(tmp_path: Path) -> None:
    areas = "area_id\nz1\nz2\n"
    feed = load(write(tmp_path, areas=areas, stop_areas="area_id,stop_id\nz1,st\nz2,p2\n"))
    assert feed.stops["p1"].areas == {"z1"}
    assert feed.stops["p2"].areas == {"z2"}
    assert (feed.stops["p1"].station, feed.stops["s1"].station) == ("st", "s1")


def test_networks_may_come_from_routes_txt(tmp_path: Path) -> None:
    routes = "route_id,route_type,network_id\nr1,1,metro\nr2,3,\n"
    feed = load(write(tmp_path, routes=routes, networks="", route_networks=""))
    assert (feed.routes["r1"].network_id, feed.routes["r2"].network_id) == ("metro", None)
    assert "networks.txt:0 : forbidden when routes.txt has a network_id column" in problems(
        tmp_path, routes=routes
    )


@pytest.mark.parametrize(("text", "currency", "minor"), [
    ("4.65", "CAD", 465), ("0.1", "USD", 10), ("-1.45", "EUR", -145), ("0.00", "CNY", 0),
    ("210", "JPY", 210), ("1.250", "KWD", 1250), ("19.99", "CNY", 1999),
])  # fmt: skip
def test_amounts_convert_exactly_with_the_currencys_minor_unit(
    text: str, currency: str, minor: int
) -> None:
    assert parse_amount(text, currency) == minor


@pytest.mark.parametrize(("text", "currency"), [
    ("1.5", "JPY"), ("1.0001", "KWD"), ("1e2", "USD"), ("1,50", "EUR"), ("2.00", "XYZ"),
])  # fmt: skip
def test_amounts_that_would_need_rounding_or_guessing_are_refused(text: str, currency: str) -> None:
    with pytest.raises(ValueError, match=currency if currency == "XYZ" else "decimals"):
        parse_amount(text, currency)


def test_every_test_feed_but_the_area_sets_one_loads() -> None:
    folders = [FARES / name for name in ("gtfs-org-translink", "nelson-streetcar", "zakroczym",
                                         "nigiri-core-airport")]  # fmt: skip
    for folder in folders:
        assert load(folder).fares == "v2"
    with pytest.raises(FeedError, match="repeats the rule of line 2"):
        load(FARES / "nigiri-hsl-area-sets")
