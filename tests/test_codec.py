"""The one codec: records round-trip through JSON unchanged, old documents still read, bad ones fail clearly.

``tests/data/records_format2.json`` was written by the hand-written ``to_dict`` methods this codec replaced
(fragileprobe before issue 14): the codec must read it and write it back byte for byte, key order included.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import pathlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fragileprobe import _codec as codec
from fragileprobe._discovery import Asset, DiscoveryReport, Move, Unresponsive
from fragileprobe._errors import ConfigError
from fragileprobe._fingerprint import ServiceInfo
from fragileprobe._groups import Alert
from fragileprobe._profile import (
    FORMAT_VERSION,
    Characterization,
    DeviceProfile,
    LevelOutcome,
    LevelResult,
    TrialResult,
)

GOLDEN = json.loads((pathlib.Path(__file__).parent / "data" / "records_format2.json").read_text())

# --- strategies -------------------------------------------------------------------------------------------

floats = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)
small = st.integers(min_value=0, max_value=500)
names = st.text(max_size=12)
maybe = st.none() | names
levels_st = st.builds(
    LevelResult,
    level=st.integers(1, 200),
    outcome=st.sampled_from(LevelOutcome),
    dwell_s=floats,
    elapsed_s=floats,
    in_flight_at_end=small,
    sessions_started=small,
    sessions_failed=small,
    latencies_s=st.lists(floats, max_size=5).map(tuple),
    beats_failed=small,
    latency_median_s=st.none() | floats,
    latency_p95_s=st.none() | floats,
    held_at_beats=st.lists(small, max_size=5).map(tuple),
    held=st.none() | small,
)
trials_st = st.builds(
    TrialResult,
    index=small,
    levels=st.lists(levels_st, max_size=4).map(tuple),
    wall_time_s=floats,
    complete=st.booleans(),
)
chars_st = st.builds(
    Characterization,
    host=names,
    model_key=maybe,
    name=maybe,
    ladder=st.lists(st.integers(1, 200), max_size=6).map(tuple),
    trials=st.lists(trials_st, max_size=3).map(tuple),
    margin_fraction=st.floats(0.0, 0.99),
    margin_levels=st.integers(1, 9),
    baseline_latency_s=st.none() | floats,
    early_warning_factor=st.none() | floats,
    safe_ceiling=st.none() | small,
    failed_at=st.none() | small,
    warned_at=st.none() | small,
    highest_passed=st.none() | small,
    ceiling_found=st.booleans(),
    latency_knee=st.none() | small,
    wall_time_s=floats,
    stop_reason=names,
    run_id=maybe,
    started_at_epoch_s=floats,
)
services_st = st.builds(
    ServiceInfo,
    port=st.integers(1, 65535),
    service=names,
    product=maybe,
    version=maybe,
    detail=maybe,
    title=maybe,
    server=maybe,
    protocol=st.sampled_from(["tcp", "udp"]),
)
# The document keeps times to the second (ISO 8601), so a round trip is exact for whole seconds.
seconds = st.integers(0, 4_000_000_000).map(float)
texts = st.lists(names, max_size=3).map(tuple)
assets_st = st.builds(
    Asset,
    host=names,
    open_ports=st.lists(st.integers(1, 65535), max_size=4).map(tuple),
    services=st.lists(services_st, max_size=3).map(tuple),
    os_family=names,
    os_evidence=texts,
    zone=names,
    zone_kind=maybe,
    model_key=names,
    known_model=maybe,
    ceiling=st.none() | small,
    groups=texts,
    first_seen_s=seconds,
    last_seen_s=seconds,
    sessions_limit=small,
    notes=texts,
    medical=st.booleans(),
)
alerts_st = st.builds(
    Alert,
    host=names,
    model=names,
    zone=names,
    zone_kind=names,
    evidence=texts,
    first_seen=names,
    groups=texts,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | floats | names,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def reports_st(draw: st.DrawFn) -> DiscoveryReport:
    assets = draw(st.lists(assets_st, max_size=4, unique_by=lambda a: a.host))
    group_names = draw(st.lists(names, max_size=3, unique=True))
    groups = {g: draw(st.lists(st.sampled_from(assets), max_size=3)) if assets else [] for g in group_names}
    return DiscoveryReport(
        assets=tuple(assets),
        groups=groups,
        alerts=tuple(draw(st.lists(alerts_st, max_size=2))),
        unresponsive=tuple(
            draw(
                st.lists(
                    st.builds(
                        Unresponsive,
                        host=names,
                        answered_ports=st.lists(st.integers(1, 65535), max_size=3).map(tuple),
                        reason=names,
                    ),
                    max_size=2,
                )
            )
        ),
        new=draw(texts),
        gone=draw(texts),
        moved=tuple(draw(st.lists(st.builds(Move, host=names, from_zone=maybe, to_zone=names), max_size=2))),
        hosts_scanned=draw(small),
        hosts_resumed=draw(small),
        wall_time_s=draw(floats),
        scan_id=draw(st.none() | small),
        notes=draw(texts),
        params=draw(st.dictionaries(names, json_values, max_size=3)),
        icmp_only=draw(texts),
        hosts_alive=draw(small),
        probes_sent=draw(small),
        max_hosts_in_parallel=draw(small),
        global_rate=draw(floats),
    )


def _through_json(data: dict[str, Any]) -> Any:
    return json.loads(json.dumps(data))


# --- round trips ------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(levels_st)
def test_a_level_round_trips(level: LevelResult) -> None:
    assert LevelResult.from_dict(_through_json(level.to_dict())) == level


@settings(max_examples=40, deadline=None)
@given(trials_st)
def test_a_trial_round_trips(trial: TrialResult) -> None:
    assert TrialResult.from_dict(_through_json(trial.to_dict())) == trial


@settings(max_examples=40, deadline=None)
@given(chars_st)
def test_a_characterization_round_trips_whatever_its_fields_hold(char: Characterization) -> None:
    """Every field survives, derived or not (the codec does not re-derive; ``rederived()`` does)."""
    assert Characterization.from_json(char.to_json()) == char
    assert Characterization.from_dict(char.to_dict()).to_dict() == char.to_dict()


@settings(max_examples=40, deadline=None)
@given(assets_st)
def test_an_asset_round_trips(asset: Asset) -> None:
    assert Asset.from_dict(_through_json(asset.to_dict())) == asset


@settings(max_examples=40, deadline=None)
@given(reports_st())
def test_a_discovery_report_round_trips_with_its_groups_as_assets(report: DiscoveryReport) -> None:
    back = DiscoveryReport.from_dict(json.loads(report.to_json()))
    assert back == report
    for group, members in back.groups.items():
        assert [a.host for a in members] == [a.host for a in report.groups[group]]


@settings(max_examples=40, deadline=None)
@given(services_st, alerts_st)
def test_the_codec_writes_what_the_records_own_to_dict_writes(service: ServiceInfo, alert: Alert) -> None:
    """ServiceInfo and Alert keep their own ``to_dict`` (their modules are not records of this layer): the
    codec that reads them inside an Asset or a report writes the same layout."""
    asset = Asset(
        host="h",
        open_ports=(),
        services=(service,),
        os_family="x",
        os_evidence=(),
        zone="z",
        zone_kind=None,
        model_key="m",
    )
    assert asset.to_dict()["services"] == [service.to_dict()]
    report = DiscoveryReport(
        assets=(),
        groups={},
        alerts=(alert,),
        unresponsive=(),
        new=(),
        gone=(),
        moved=(),
        hosts_scanned=0,
        hosts_resumed=0,
        wall_time_s=0.0,
    )
    assert report.to_dict()["alerts"] == [alert.to_dict()]


# --- the layout of today's documents ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "read"),
    [("characterization", Characterization.from_dict), ("report", DiscoveryReport.from_dict)],
)
def test_documents_written_before_the_codec_read_back_and_rewrite_byte_for_byte(key: str, read: Any) -> None:
    document = GOLDEN[key]
    record = read(document)
    assert json.dumps(record.to_dict()) == json.dumps(document)  # same keys, same order, same values


def test_a_profile_document_keeps_its_derived_keys_in_place() -> None:
    char = Characterization.from_dict(GOLDEN["characterization"])
    profile = DeviceProfile(model_key="acme-pump-3f2a", characterizations=(char,))
    assert json.dumps(profile.to_dict()) == json.dumps(GOLDEN["profile"])


def test_a_document_from_before_held_and_margin_levels_reads_with_their_defaults() -> None:
    """Format 1 had no ``margin_levels``, levels had no ``held_at_beats``/``held``: absent keys of fields
    with a default read as that default."""
    old = json.loads(json.dumps(GOLDEN["characterization"]))
    old["format"] = 1
    del old["margin_levels"]
    for trial in old["trials"]:
        for level in trial["levels"]:
            del level["held_at_beats"], level["held"]
    char = Characterization.from_dict(old)
    assert char.margin_levels == 3
    assert all(lv.held_at_beats == () and lv.held is None for t in char.trials for lv in t.levels)


def test_dataframe_columns_come_from_the_level_fields() -> None:
    char = Characterization.from_dict(GOLDEN["characterization"])
    df = char.to_dataframe()
    fields = [f.name for f in dataclasses.fields(LevelResult) if f.name != "held_at_beats"]
    assert list(df.columns) == ["trial", "order", *["beats" if f == "latencies_s" else f for f in fields]]
    assert list(df["beats"]) == [len(lv.latencies_s) for t in char.trials for lv in t.levels]
    # every column the DataFrame had before the codec is still there
    before = {
        "trial",
        "order",
        "level",
        "outcome",
        "elapsed_s",
        "in_flight_at_end",
        "sessions_started",
        "sessions_failed",
        "latency_median_s",
        "latency_p95_s",
        "beats",
        "beats_failed",
    }
    assert before <= set(df.columns)


def test_asset_dataframe_columns_come_from_the_asset_fields() -> None:
    report = DiscoveryReport.from_dict(GOLDEN["report"])
    df = report.to_dataframe()
    assert list(df.columns) == [f.name for f in dataclasses.fields(Asset)] + ["alert"]
    row = df.iloc[0]
    assert row["open_ports"] == "21,80,8080"
    assert row["groups"] == "Medical Device?; Web"
    assert row["services"] == "21/ftp vsFTPd, 8080/http, 161/snmp"
    assert list(df["alert"]) == [True, False]


# --- strict on input --------------------------------------------------------------------------------------


def _level_doc(**changes: Any) -> dict[str, Any]:
    doc = dict(GOLDEN["characterization"]["trials"][0]["levels"][0])
    doc.update(changes)
    return doc


def _char_doc(**changes: Any) -> dict[str, Any]:
    return {**GOLDEN["characterization"], **changes}


BAD_CHARACTERIZATIONS = [
    ("host a number", _char_doc(host=5), "host", r"host: must be a string, got 5"),
    (
        "host missing",
        {k: v for k, v in _char_doc().items() if k != "host"},
        "host",
        r"host: must be present, got nothing",
    ),
    ("ladder a string", _char_doc(ladder="1,2"), "ladder", r"ladder: must be a list, got '1,2'"),
    ("level a digit string", _char_doc(ladder=["٢"]), "ladder[0]", r"ladder\[0\]: must be an integer"),
    ("level a bool", _char_doc(ladder=[True]), "ladder[0]", r"must be an integer, got True"),
    ("level a float", _char_doc(ladder=[2.7]), "ladder[0]", r"must be an integer, got 2\.7"),
    ("margin a string", _char_doc(margin_fraction="0.1"), "margin_fraction", r"must be a finite number"),
    ("ceiling_found a number", _char_doc(ceiling_found=1), "ceiling_found", r"must be true or false, got 1"),
    ("trial not an object", _char_doc(trials=[7]), "trials[0]", r"trials\[0\]: must be an object, got 7"),
    (
        "outcome unknown",
        _char_doc(trials=[{"index": 0, "levels": [_level_doc(outcome="exploded")]}]),
        "trials[0].levels[0].outcome",
        r"must be one of 'passed', 'failed', 'warned', 'aborted'",
    ),
    (
        "outcome a list",
        _char_doc(trials=[{"index": 0, "levels": [_level_doc(outcome=[])]}]),
        "trials[0].levels[0].outcome",
        r"got \[\]",
    ),
    (
        "level key missing",
        _char_doc(trials=[{"index": 0, "levels": [{k: v for k, v in _level_doc().items() if k != "level"}]}]),
        "trials[0].levels[0].level",
        r"present",
    ),
    ("format a string", _char_doc(format="2"), "format", r"format: must be an integer, got '2'"),
    ("a huge bad value is quoted short", _char_doc(host=["x" * 10_000]), "host", r"got \['xxx.{0,60}$"),
]


@pytest.mark.parametrize(
    ("row", "doc", "field", "pattern"), BAD_CHARACTERIZATIONS, ids=[r[0] for r in BAD_CHARACTERIZATIONS]
)
def test_a_bad_characterization_document_names_the_key(row: str, doc: Any, field: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=r"^characterization data is malformed: .*" + pattern) as info:
        Characterization.from_dict(doc)
    assert info.value.field == field


def test_newer_format_and_non_objects_are_refused() -> None:
    with pytest.raises(ConfigError, match=rf"format {FORMAT_VERSION + 1} is newer"):
        Characterization.from_dict(_char_doc(format=FORMAT_VERSION + 1))
    for value in (None, [], "x", 3):
        with pytest.raises(ConfigError, match=r"malformed: expected an object"):
            Characterization.from_dict(value)  # type: ignore[arg-type]


BAD_REPORTS = [
    ("group names a stranger", {"groups": {"Web": ["10.9.9.9"]}}, "groups.Web[0]", r"host of an asset"),
    ("group not a list", {"groups": {"Web": "127.0.0.5"}}, "groups.Web", r"must be a list"),
    (
        "asset time not ISO",
        {"assets": [{**GOLDEN["report"]["assets"][0], "first_seen": "yesterday"}]},
        "assets[0].first_seen",
        r"ISO 8601",
    ),
    (
        "asset time without offset",
        {"assets": [{**GOLDEN["report"]["assets"][0], "first_seen": "2025-12-01T14:40:00"}]},
        "assets[0].first_seen",
        r"ISO 8601",
    ),
    ("params not an object", {"params": [1]}, "params", r"params: must be an object"),
    ("scan id a string", {"scan_id": "7"}, "scan_id", r"scan_id: must be an integer"),
]


@pytest.mark.parametrize(("row", "changes", "field", "pattern"), BAD_REPORTS, ids=[r[0] for r in BAD_REPORTS])
def test_a_bad_discovery_report_names_the_key(row: str, changes: Any, field: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=r"^discovery report data is malformed: .*" + pattern) as info:
        DiscoveryReport.from_dict({**GOLDEN["report"], **changes})
    assert info.value.field == field


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def _replace(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy = json.loads(json.dumps(doc))
    node = copy
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return copy


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_any_value_anywhere_in_a_document_reads_or_fails_with_config_error(data: st.DataObject) -> None:
    """Hostile input: whatever JSON value replaces whatever part of a real document, reading it gives a
    record or a ConfigError (never a KeyError, TypeError, ...)."""
    key = data.draw(st.sampled_from(["characterization", "report"]))
    read = Characterization.from_dict if key == "characterization" else DiscoveryReport.from_dict
    path = data.draw(st.sampled_from(_paths(GOLDEN[key])))
    doc = _replace(GOLDEN[key], path, data.draw(json_values))
    try:
        read(doc)
    except ConfigError as exc:
        message = str(exc)
    else:
        return
    assert "malformed" in message or "newer" in message


# --- the codec itself -------------------------------------------------------------------------------------


class _Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass(frozen=True, slots=True)
class _Inner:
    n: int


@dataclasses.dataclass(frozen=True, slots=True)
class _Sample:
    name: str
    colour: _Colour
    inner: _Inner
    inners: tuple[_Inner, ...]
    ratio: float | None
    tags: tuple[str, ...] = ()
    kind: str = "plain"


_INNER = codec.Codec(_Inner, label="inner")
_SAMPLE = codec.Codec(
    _Sample,
    label="sample",
    fields={"kind": codec.Field(omit_default=True), "tags": codec.Field(key="labels", column="")},
    computed=(codec.Computed("version", lambda s: 1), codec.Computed("count", lambda s: 2, after="inner")),
)


def test_converters_are_derived_from_the_annotations() -> None:
    sample = _Sample(
        name="a",
        colour=_Colour.BLUE,
        inner=_Inner(1),
        inners=(_Inner(2),),
        ratio=None,
        tags=("x",),
        kind="odd",
    )
    doc = _SAMPLE.encode(sample)
    assert doc == {
        "version": 1,
        "name": "a",
        "colour": "blue",
        "inner": {"n": 1},
        "count": 2,
        "inners": [{"n": 2}],
        "ratio": None,
        "labels": ["x"],
        "kind": "odd",
    }
    assert list(doc) == ["version", "name", "colour", "inner", "count", "inners", "ratio", "labels", "kind"]
    assert _SAMPLE.decode(doc) == sample
    assert "kind" not in _SAMPLE.encode(dataclasses.replace(sample, kind="plain"))
    assert _SAMPLE.columns() == ("name", "colour", "inner", "inners", "ratio", "kind")
    assert _SAMPLE.row(sample)["colour"] == "blue"


def test_absent_keys_take_the_default_or_none_and_required_ones_fail() -> None:
    doc = {"name": "a", "colour": "red", "inner": {"n": 1}, "inners": []}
    bare = _Sample(name="a", colour=_Colour.RED, inner=_Inner(1), inners=(), ratio=None)
    assert _SAMPLE.decode(doc) == bare
    with pytest.raises(ConfigError, match=r"^sample data is malformed: inner\.n: must be present") as info:
        _SAMPLE.decode({**doc, "inner": {}})
    assert info.value.field == "inner.n"
    with pytest.raises(ConfigError, match=r"inners\[1\]\.n: must be an integer, got 'x'"):
        _SAMPLE.decode({**doc, "inners": [{"n": 1}, {"n": "x"}]})


def test_a_codec_without_a_converter_or_with_a_stray_override_is_a_programming_error() -> None:
    @dataclasses.dataclass(frozen=True)
    class Odd:
        when: complex

    with pytest.raises(TypeError, match="no field"):
        codec.Codec(Odd, label="odd", fields={"whne": codec.Field()})
    with pytest.raises(TypeError, match=r"Odd\.when: no converter"):
        codec.Codec(Odd, label="odd").encode(Odd(1j))
