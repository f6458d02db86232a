"""QIDO-RS as PS3.18 10.6 has it, asked of a running node: what a search matches, returns, warns and refuses."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset

from tests.conftest import FAST_COMPLETION
from tests.factory import ct_slice, uid
from tests.peers.processes import Node, free_port

JSON = {"Accept": "application/dicom+json"}


@dataclass(frozen=True)
class Loaded:
    node: Node
    smith: str  # study of SMITH^JOHN, 12:00, a CT series of 3 and a SEG of 1
    yamada: str  # study of Yamada^Tarou=山田^太郎=やまだ^たろう, 09:30, a CT series of 2
    ct: str  # SMITH's CT series

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.node.http_port}/dicom-web"

    def get(self, path: str, headers: dict[str, str] | None = None, **params: str) -> httpx.Response:
        return self.ask(path, params, headers)

    def ask(self, path: str, params: dict[str, str], headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.get(f"{self.base}{path}", params=params, headers=headers or JSON, timeout=30)

    def search(self, path: str, **params: str) -> list[dict[str, Any]]:
        response = self.ask(path, params)
        assert response.status_code == 200, response.text
        assert "Warning" not in response.headers, response.headers["Warning"]
        found: list[dict[str, Any]] = response.json()
        return found


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    folder = tmp_path_factory.mktemp("qido")
    node = Node(folder / "node", free_port(), free_port(), extra_env=dict(FAST_COMPLETION)).start()
    smith, yamada = uid("qido", "smith"), uid("qido", "yamada")
    ct, seg, other = uid("qido", "smith-ct"), uid("qido", "smith-seg"), uid("qido", "yamada-ct")
    instances = [ct_slice(smith, ct, i, size=16) for i in range(3)]
    instances.append(ct_slice(smith, seg, 0, size=16, modality="SEG"))
    for ds in instances:  # the SEG made the next morning, as a re-analysis would be
        ds.SeriesDate, ds.SeriesTime = ("20260102", "081500") if ds.Modality == "SEG" else ("20260101", "120512")
    for ds in instances:
        ds.PatientName, ds.ReferringPhysicianName = "SMITH^JOHN", "Doe^Jane"
    for i in range(2):
        ds = ct_slice(yamada, other, i, size=16)
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
        ds.ReferringPhysicianName = "Sato^Ken==さとう^けん"  # no ideographic group
        ds.StudyTime = "0930"
        instances.append(ds)
    DICOMwebClient(url=f"http://127.0.0.1:{node.http_port}/dicom-web").store_instances(instances)
    yield Loaded(node, smith, yamada, ct)
    node.stop()


def uids(found: list[dict[str, Any]], tag: str = "0020000D") -> list[str]:
    return sorted({f[tag]["Value"][0] for f in found})


def test_person_names_match_whatever_the_case(loaded: Loaded) -> None:
    """OHIF's study list sends what the user types between wildcards."""
    assert uids(loaded.search("/studies", PatientName="*smith*")) == [loaded.smith]
    assert uids(loaded.search("/studies", PatientName="smith^john")) == [loaded.smith]
    assert uids(loaded.search("/studies", PatientName="YAMADA*")) == [loaded.yamada]
    assert uids(loaded.search("/studies", ReferringPhysicianName="*SATO*")) == [loaded.yamada]
    assert uids(loaded.search("/series", PatientName="*smith*")) == [loaded.smith]
    assert uids(loaded.search("/instances", PatientName="*Smith*", Modality="SEG")) == [loaded.smith]
    assert loaded.search("/studies", PatientID="syn0001") == []  # an LO matches as DICOM says: with its case


def test_fuzzy_matching_is_answered_with_a_warning_that_it_is_not_done(loaded: Loaded) -> None:
    response = loaded.get("/studies", PatientName="smith*", fuzzymatching="true")
    assert response.status_code == 200 and uids(response.json()) == [loaded.smith]
    assert response.headers["Warning"] == (
        '299 uronode "The fuzzymatching parameter is not supported. Only literal matching has been performed."')
    assert len(loaded.search("/studies", PatientName="smith*", fuzzymatching="false")) == 1
    response = loaded.get("/studies", fuzzymatching="maybe", PatientName="x", unknown="1")
    assert response.status_code == 400 and "fuzzymatching must be true or false" in response.json()["detail"]
    both = loaded.get("/series", fuzzymatching="true", Unknown="1").headers["Warning"]
    assert both.startswith('299 uronode "ignored unsupported attributes: Unknown", 299 uronode "The fuzzy')


def test_person_names_are_split_into_their_groups_as_metadata_has_them(loaded: Loaded) -> None:
    (study,) = loaded.search("/studies", StudyInstanceUID=loaded.yamada)
    assert study["00100010"] == {"vr": "PN", "Value": [
        {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}]}
    assert study["00080090"] == {"vr": "PN", "Value": [{"Alphabetic": "Sato^Ken", "Phonetic": "さとう^けん"}]}
    (series,) = loaded.search(f"/studies/{loaded.yamada}/series")
    metadata = loaded.get(f"/studies/{loaded.yamada}/series/{series['0020000E']['Value'][0]}/metadata").json()
    assert all(m["00100010"] == study["00100010"] for m in metadata)
    (smith,) = loaded.search("/studies", StudyInstanceUID=loaded.smith)
    assert smith["00100010"]["Value"] == [{"Alphabetic": "SMITH^JOHN"}]


def test_a_search_of_a_study_or_series_that_is_not_there_is_empty(loaded: Loaded) -> None:
    for path in ("/studies/1.2.3.4/series", "/studies/1.2.3.4/instances", f"/studies/{loaded.smith}/series/1.2.3/instances",
                 "/studies/1.2.3.4/series/1.2.3/instances"):
        assert loaded.search(path) == [], path
    web = DICOMwebClient(url=loaded.base)
    assert web.search_for_series(study_instance_uid="1.2.3.4") == []
    for path, reason in [
        ("/studies/not-a-uid/series", "the study in the path, 'not-a-uid', is not a UID"),
        ("/studies/1.02.3/instances", "the study in the path, '1.02.3', is not a UID"),
        (f"/studies/{loaded.smith}/series/1.2..3/instances", "the series in the path, '1.2..3', is not a UID"),
    ]:
        response = loaded.get(path)
        assert (response.status_code, response.json()["detail"]) == (400, reason)


STUDY_TAGS = {"00100010", "00100020", "00100030", "00100040", "00080020", "00080030", "00080050", "00080090",
              "00080061", "00200010", "00201206", "00201208", "00081030"}
SERIES_TAGS = {"00080060", "0008103E", "0020000E", "00200011", "00201209"}


def test_a_search_without_the_study_or_series_in_its_path_returns_theirs(loaded: Loaded) -> None:
    (study,) = loaded.search("/studies", StudyInstanceUID=loaded.smith)
    assert study["00080056"] == {"vr": "CS", "Value": ["ONLINE"]}
    series = loaded.search("/series", StudyInstanceUID=loaded.smith)
    assert len(series) == 2
    for found in series:
        assert STUDY_TAGS <= found.keys() and SERIES_TAGS <= found.keys()
        assert {tag: found[tag] for tag in STUDY_TAGS} == {tag: study[tag] for tag in STUDY_TAGS}
        assert found["00080056"]["Value"] == ["ONLINE"]
        assert found["00081190"]["Value"][0].endswith(f"/series/{found['0020000E']['Value'][0]}")
    assert study["00080061"]["Value"] == ["CT", "SEG"] and study["00201208"]["Value"] == [4]

    instances = loaded.search("/instances", StudyInstanceUID=loaded.smith)
    assert len(instances) == 4
    for found in instances:
        assert STUDY_TAGS <= found.keys() and SERIES_TAGS <= found.keys()
        assert found["00100010"]["Value"] == [{"Alphabetic": "SMITH^JOHN"}]
        assert found["00080056"]["Value"] == ["ONLINE"]
    assert sorted((f["00080060"]["Value"][0], f["00201209"]["Value"][0]) for f in instances) == [
        ("CT", 3), ("CT", 3), ("CT", 3), ("SEG", 1)]

    in_study = loaded.search(f"/studies/{loaded.smith}/instances")
    assert all(SERIES_TAGS <= f.keys() and not STUDY_TAGS & f.keys() for f in in_study)
    in_series = loaded.search(f"/studies/{loaded.smith}/series/{loaded.ct}/instances")
    assert len(in_series) == 3
    assert all(not (SERIES_TAGS - {"0020000E"}) & f.keys() and not STUDY_TAGS & f.keys() for f in in_series)
    assert all(f["00080056"]["Value"] == ["ONLINE"] for f in in_series)
    (named,) = loaded.search(f"/studies/{loaded.smith}/series/{loaded.ct}/instances", includefield="PatientName",
                             limit="1")
    assert named["00100010"]["Value"] == [{"Alphabetic": "SMITH^JOHN"}]
    in_study_series = loaded.search(f"/studies/{loaded.smith}/series")
    assert all(not STUDY_TAGS & f.keys() for f in in_study_series)  # OHIF's series list: as it was


def test_time_ranges_and_impossible_dates(loaded: Loaded) -> None:
    assert uids(loaded.search("/studies", StudyTime="110000-130000")) == [loaded.smith]
    assert uids(loaded.search("/studies", StudyDate="20260101", StudyTime="-130000")) == sorted(
        [loaded.smith, loaded.yamada])
    assert uids(loaded.search("/studies", StudyTime="110000-")) == [loaded.smith]
    assert uids(loaded.search("/series", StudyTime="0900-1000")) == [loaded.yamada]
    for params, reason in [
        ({"StudyDate": "20261301"}, "StudyDate: '20261301' is not a date: month must be in 1..12"),
        ({"StudyTime": "250000-"}, "StudyTime: '250000' is not a time of day"),
    ]:
        response = loaded.ask("/studies", params)
        assert (response.status_code, response.json()["detail"]) == (400, reason)


def test_uid_lists_separated_by_backslashes(loaded: Loaded) -> None:
    both = sorted([loaded.smith, loaded.yamada])
    assert uids(loaded.search("/studies", StudyInstanceUID=f"{loaded.smith}\\{loaded.yamada}")) == both
    assert uids(loaded.search("/studies", StudyInstanceUID=f"{loaded.smith},{loaded.yamada}")) == both
    assert uids(loaded.search("/studies", ModalitiesInStudy="MR\\SEG")) == [loaded.smith]


def test_a_key_given_twice_is_refused_with_the_list_it_takes(loaded: Loaded) -> None:
    base = f"{loaded.base}/studies"
    for query, reason in [
        (f"StudyInstanceUID={loaded.smith}&StudyInstanceUID={loaded.yamada}",
         "StudyInstanceUID is given more than once; give several UIDs as one comma-separated value"),
        ("PatientName=SMITH*&00100010=Yamada*", "00100010 is given more than once"),
        ("limit=1&limit=5", "limit is given more than once"),
        ("offset=0&offset=1", "offset is given more than once"),
    ]:
        response = httpx.get(f"{base}?{query}", headers=JSON, timeout=30)
        assert (response.status_code, response.json()["detail"]) == (400, reason), query
    found = httpx.get(f"{base}?includefield=StudyID&includefield=StudyDate&PatientName=SMITH*", headers=JSON)
    assert found.status_code == 200 and uids(found.json()) == [loaded.smith]  # includefield with a key: fine


@pytest.mark.parametrize("accept", [
    "application/dicom+json", "application/json", "*/*", "application/*", "",
    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",  # a browser's
    'multipart/related; type="application/dicom+xml", application/dicom+json;q=0.5',
])
def test_searches_answer_what_the_client_accepts(loaded: Loaded, accept: str) -> None:
    response = loaded.get("/studies", headers={"Accept": accept})
    assert response.status_code == 200 and response.headers["content-type"] == "application/dicom+json"


@pytest.mark.parametrize(("accept", "param"), [
    ('multipart/related; type="application/dicom+xml"', None),
    ("application/dicom+xml", None),
    ("text/html", None),
    ("image/png", None),
    ("application/dicom+json;q=0", None),
    ("*/*", "application/dicom+xml"),  # the parameter takes precedence over the header
])
def test_searches_refuse_an_accept_without_json(loaded: Loaded, accept: str, param: str | None) -> None:
    params = {"accept": param} if param else {}
    for path in ("/studies", "/series", f"/studies/{loaded.smith}/series/{loaded.ct}/instances"):
        response = loaded.ask(path, params, headers={"Accept": accept})
        assert response.status_code == 406, (path, accept)
        assert "DICOM XML is not produced" in response.json()["detail"]
    assert loaded.get("/studies", headers={"Accept": "application/dicom+xml"},
                      accept="application/dicom+json").status_code == 200


def test_a_result_cut_at_the_nodes_limit_says_so(start_node: Callable[..., Node]) -> None:
    """10,001 studies written into the index (storing as many would take minutes): the node answers 10,000."""
    node = start_node()
    with sqlite3.connect(node.data_dir / "index.sqlite3", timeout=30) as conn:
        conn.executemany("INSERT INTO studies (study_instance_uid, patient_name, study_date, updated_at)"
                         " VALUES (?, 'Many^Studies', '20260101', 0)", ((f"1.2.{n}",) for n in range(10_001)))
    conn.close()
    base = f"http://127.0.0.1:{node.http_port}/dicom-web"
    more = '299 uronode "There are additional results that can be requested"'
    for params in ({}, {"limit": "20000"}):
        response = httpx.get(f"{base}/studies", params=params, headers=JSON, timeout=60)
        assert response.status_code == 200 and len(response.json()) == 10_000
        assert response.headers["Warning"] == more
    for params, count in [({"limit": "5"}, 5), ({"offset": "9999"}, 2), ({"offset": "1", "limit": "10000"}, 10_000)]:
        response = httpx.get(f"{base}/studies", params=params, headers=JSON, timeout=60)
        assert response.status_code == 200 and len(response.json()) == count
        assert "Warning" not in response.headers, params  # the client's limit, or all there is
    assert len(httpx.get(f"{base}/studies", params={"offset": "9000"}, headers=JSON, timeout=60).json()) == 1001


def test_a_search_still_finds_what_ohif_asks_for(loaded: Loaded) -> None:
    """OHIF's study list: a date range, a name typed in lower case, a limit and includefield."""
    found = loaded.search("/studies", StudyDate="20250101-20261231", PatientName="*smi*", limit="101", offset="0",
                          fuzzymatching="false", includefield="00081030,00080060")
    assert uids(found) == [loaded.smith]


def path_of(url: str) -> str:
    return url.split("/dicom-web", 1)[1]


def test_retrieve_urls_lead_to_what_was_found(loaded: Loaded) -> None:
    (study,) = loaded.search("/studies", StudyInstanceUID=loaded.yamada)
    (series,) = loaded.search("/series", StudyInstanceUID=loaded.yamada)
    instances = loaded.search("/instances", StudyInstanceUID=loaded.yamada)
    assert path_of(study["00081190"]["Value"][0]) == f"/studies/{loaded.yamada}"
    assert path_of(series["00081190"]["Value"][0]) == f"/studies/{loaded.yamada}/series/{series['0020000E']['Value'][0]}"
    assert all(path_of(i["00081190"]["Value"][0]).endswith(f"/instances/{i['00080018']['Value'][0]}") for i in instances)


def test_dicomweb_client_reads_the_new_attributes(loaded: Loaded, tmp_path: Path) -> None:
    web = DICOMwebClient(url=loaded.base)
    (found,) = web.search_for_series(search_filters={"PatientName": "yamada*"})
    assert found["00100010"]["Value"][0]["Ideographic"] == "山田^太郎"
    assert web.search_for_instances(study_instance_uid="1.2.3.4") == []


def test_a_doubled_or_trailing_slash_is_the_plain_path(loaded: Loaded) -> None:
    """Found by probing: a base URL configured with a trailing slash (``.../dicom-web/`` + ``/studies``), or a
    trailing slash, was a 404 (the viewer's catch-all took it)."""
    root = f"http://127.0.0.1:{loaded.node.http_port}"
    plain = httpx.get(f"{loaded.base}/studies/{loaded.smith}/series", headers=JSON, timeout=30)
    assert plain.status_code == 200 and plain.json()
    for path in (f"/dicom-web//studies/{loaded.smith}/series", f"/dicom-web/studies/{loaded.smith}/series/",
                 f"//dicom-web/studies/{loaded.smith}//series//"):
        got = httpx.get(f"{root}{path}", headers=JSON, timeout=30)
        assert (got.status_code, got.json()) == (200, plain.json()), path
    assert httpx.get(f"{root}/dicom-web/studies/1.2.3/series/", headers=JSON, timeout=30).json() == []


def test_head_is_answered_as_get_without_the_body(loaded: Loaded) -> None:
    """Found by probing: HEAD answered 405 on every DICOMweb resource (RFC 9110: a server supports GET and
    HEAD). Searches, metadata and retrieves answer HEAD with GET's status and headers, and no body."""
    for path in ("/studies", f"/studies/{loaded.smith}/series",
                 f"/studies/{loaded.smith}/series/{loaded.ct}/metadata",
                 f"/studies/{loaded.smith}/series/{loaded.ct}"):
        accept = "multipart/related; type=\"application/dicom\"; transfer-syntax=*" if path.count("/") == 4 else \
            "application/dicom+json"
        got = httpx.get(f"{loaded.base}{path}", headers={"Accept": accept}, timeout=30)
        head = httpx.head(f"{loaded.base}{path}", headers={"Accept": accept}, timeout=30)
        assert (head.status_code, head.content) == (200, b""), path
        assert got.status_code == 200 and got.content
        assert head.headers["content-type"].split(";")[0] == got.headers["content-type"].split(";")[0]
    assert httpx.head(f"{loaded.base}/studies/1.2.3/series/4.5.6/metadata", timeout=30).status_code == 404


def test_an_instance_search_returns_rows_columns_bits_and_frames(loaded: Loaded) -> None:
    """PS3.18 table 10.6.3-5: an instance's Rows, Columns, BitsAllocated and NumberOfFrames (this one if present)
    are returned by default; dicomweb-client reads them as pydicom would."""
    in_series = loaded.search(f"/studies/{loaded.smith}/series/{loaded.ct}/instances")
    assert [(f["00280010"], f["00280011"], f["00280100"]) for f in in_series] == [
        ({"vr": "US", "Value": [16]}, {"vr": "US", "Value": [16]}, {"vr": "US", "Value": [16]})] * 3
    assert all(f["00280008"] == {"vr": "IS"} for f in in_series)  # single-frame slices: none said
    web = DICOMwebClient(url=loaded.base)
    (first, *_) = web.search_for_instances(study_instance_uid=loaded.smith, series_instance_uid=loaded.ct)
    ds = Dataset.from_json(first)
    assert (ds.Rows, ds.Columns, ds.BitsAllocated) == (16, 16, 16)


def test_series_date_and_time_are_matched_and_returned_through_includefield(loaded: Loaded) -> None:
    """Probe 32 #8: two result series of one series number (an analysis and a re-analysis) are told apart by their
    SeriesDate/SeriesTime, which a search returns when asked (``includefield``) and matches as ranges."""
    plain = loaded.search(f"/studies/{loaded.smith}/series")
    assert len(plain) == 2 and all("00080021" not in f and "00080031" not in f for f in plain)  # not a default
    found = {f["00080060"]["Value"][0]: f for f in loaded.search(f"/studies/{loaded.smith}/series",
                                                                  includefield="SeriesDate,00080031")}
    assert found["CT"]["00080021"] == {"vr": "DA", "Value": ["20260101"]}
    assert found["CT"]["00080031"] == {"vr": "TM", "Value": ["120512"]}
    assert found["SEG"]["00080021"]["Value"] == ["20260102"] and found["SEG"]["00080031"]["Value"] == ["081500"]
    later = loaded.search("/series", SeriesDate="20260102-")
    assert [f["00080060"]["Value"][0] for f in later] == ["SEG"] and later[0]["00080021"]["Value"] == ["20260102"]
    assert [f["00080060"]["Value"][0] for f in loaded.search("/series", SeriesTime="-0900")] == ["SEG"]
    (everything,) = loaded.search("/series", includefield="all", SeriesInstanceUID=loaded.ct)
    assert everything["00080021"]["Value"] == ["20260101"]
    yamada = loaded.search("/series", StudyInstanceUID=loaded.yamada, includefield="SeriesDate")
    assert "Value" not in yamada[0]["00080021"]  # none in its images: asked for, so present and empty
    instances = loaded.search(f"/studies/{loaded.smith}/instances", includefield="SeriesDate", Modality="SEG")
    assert [f["00080021"]["Value"] for f in instances] == [["20260102"]]


def test_a_search_inside_a_study_or_series_matches_the_levels_above_it(loaded: Loaded) -> None:
    """Probe 32 #6: a key of the study (or series) in a search scoped to it is matched, not ignored with a
    warning that let every instance of the study answer a search for another patient."""
    mine = loaded.search(f"/studies/{loaded.smith}/instances", PatientID="SYN0001")
    assert len(mine) == 4 and all(f["00100020"]["Value"] == ["SYN0001"] for f in mine)  # a matched key is returned
    assert loaded.search(f"/studies/{loaded.smith}/instances", PatientID="OTHER") == []
    assert loaded.search(f"/studies/{loaded.smith}/series", PatientName="yamada*") == []
    assert len(loaded.search(f"/studies/{loaded.smith}/series", PatientName="smith*")) == 2
    assert loaded.search(f"/studies/{loaded.smith}/series/{loaded.ct}/instances", Modality="SEG") == []
    assert len(loaded.search(f"/studies/{loaded.smith}/series/{loaded.ct}/instances", Modality="CT",
                             StudyDate="20260101")) == 3
    assert loaded.search(f"/studies/{loaded.smith}/series", StudyInstanceUID=loaded.yamada) == []
