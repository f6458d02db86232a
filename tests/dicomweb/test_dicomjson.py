"""DICOM JSON as the node writes it: the QIDO builders' fast paths, non-ASCII names, and floats JSON cannot hold."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from dicomweb.dicomjson import ATTRIBUTES, _element, datasets, dumps, person_name
from tests.factory import ct_slice, uid
from tests.peers.processes import Node, storescu

JSON = {"Accept": "application/dicom+json"}


@pytest.mark.parametrize("value", [None, "", [], "1.2.840.10008.5.1.4.1.1.2", ["CT", "SEG"], 7, [1, 2], "12", "Müller^Jörg",
                                   ["Doe^John", "Roe^Jane"]])
def test_every_builder_gives_what_the_plain_element_gives(value: object) -> None:
    """The per-VR fast paths (one string, one int) change nothing in what is written."""
    for keyword, (tag, vr) in ATTRIBUTES.items():
        if vr in ("IS", "US") and isinstance(value, str) and value and not value.isdigit():
            continue  # an IS or a US holds numbers only
        if vr in ("IS", "US") and isinstance(value, list) and any(isinstance(v, str) for v in value):
            continue
        (built,) = datasets([keyword], [{keyword: value}])
        assert built == {tag: _element(vr, value)}, (keyword, value)


@pytest.mark.parametrize("name", ["Doe^John", "Wang^XiaoDong=王^小東", "Yamada^Tarou=山田^太郎=やまだ^たろう", "Müller^Jörg="])
def test_person_names_are_split_as_pydicom_splits_them_for_metadata(name: str) -> None:
    """QIDO's names and /metadata's (pydicom's to_json_dict) agree."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.PatientName = name
    (built,) = datasets(["PatientName"], [{"PatientName": name}])
    assert built["00100010"] == ds.to_json_dict()["00100010"]


@pytest.mark.parametrize(("name", "groups"), [
    ("Yamada^Tarou==やまだ^たろう", {"Alphabetic": "Yamada^Tarou", "Phonetic": "やまだ^たろう"}),
    ("=山田^太郎", {"Ideographic": "山田^太郎"}),
    ("==やまだ", {"Phonetic": "やまだ"}),
    ("=", {}),
])
def test_empty_person_name_groups_are_left_out(name: str, groups: dict[str, str]) -> None:
    assert person_name(name) == groups
    assert "=" not in "".join(person_name(name).values())


def test_dumps_is_strict_json_in_utf8() -> None:
    text = dumps([{"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jörg"}]}},
                  {"00189327": {"vr": "FD", "Value": [float("nan"), float("inf"), 1.5]}}])
    parsed = json.loads(text.decode("utf-8"), parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert parsed[0]["00100010"]["Value"][0]["Alphabetic"] == "Müller^Jörg"
    assert parsed[1]["00189327"]["Value"] == [None, None, 1.5]


def test_a_non_ascii_name_and_a_nan_survive_qido_and_cached_metadata(start_node: Callable[..., Node],
                                                                      tmp_path: Path) -> None:
    """A browser's JSON.parse refuses NaN: a scanner's NaN float must not break the series for OHIF."""
    node = start_node()
    study, series = uid("json-study"), uid("json-series")
    folder = tmp_path / "ct"
    folder.mkdir()
    for i in range(3):
        ds = ct_slice(study, series, i, size=32)
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = "Müller^Jörg"
        ds.TableHeight = math.nan  # DS, written by pydicom as text
        ds.add_new(0x00189327, "FD", float("nan"))  # Table Position, FD: a binary NaN
        ds.save_as(folder / f"{i}.dcm", enforce_file_format=True)
    assert storescu(node.dicom_port, folder).returncode == 0
    base = f"http://127.0.0.1:{node.http_port}/dicom-web"

    def strict(response: httpx.Response) -> list[dict[str, dict[str, object]]]:
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/dicom+json")
        data = json.loads(response.content.decode("utf-8"), parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
        assert isinstance(data, list)
        return data

    (found,) = strict(httpx.get(f"{base}/studies?StudyInstanceUID={study}", headers=JSON, timeout=30))
    assert found["00100010"]["Value"] == [{"Alphabetic": "Müller^Jörg"}]
    for _ in range(2):  # built, then read from the cache
        metadata = strict(httpx.get(f"{base}/studies/{study}/series/{series}/metadata", headers=JSON, timeout=30))
        assert len(metadata) == 3
        assert all(m["00100010"]["Value"] == [{"Alphabetic": "Müller^Jörg"}] for m in metadata)
        assert all(m["00189327"].get("Value") in (None, [None]) for m in metadata)
