"""End to end with a real Orthanc: a CT series goes in, SEG, SC, SR and key objects come back into the same study.

Orthanc auto-routes the stable CT series to the node (orthanc/autoroute.lua);
the node's worker runs the shipped model and delivers the results to Orthanc
by C-STORE; they are read back through Orthanc's DICOMweb.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest

from lab.synth import generate_phantom, write_series
from tests.conftest import WITH_WORKER, query
from tests.peers.orthanc import modalities_in_study, qido, sop_instance_uids_in_study
from tests.peers.processes import Node, Proc, free_port, start_orthanc, storescu, wait_until
from uronode.dicomfile import IMPLEMENTATION_VERSION_NAME

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pacs_and_node(start_node: Callable[..., Node], tmp_path: Path) -> Iterator[tuple[Proc, int, int, Node]]:
    http, dicom = free_port(), free_port()
    destination = [{"name": "pacs", "kind": "dicom", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": dicom}]
    node = start_node(
        **WITH_WORKER,
        URONODE_DELIVERY__DESTINATIONS=json.dumps(destination),
        URONODE_DELIVERY__BACKOFF_S="0.5",
        URONODE_DELIVERY__BACKOFF_MAX_S="2",
    )
    lua = tmp_path / "autoroute.lua"
    shutil.copy(ROOT / "orthanc" / "autoroute.lua", lua)
    orthanc = start_orthanc(
        tmp_path / "orthanc", http_port=http, dicom_port=dicom, StableAge=1, LuaScripts=[str(lua)],
        DicomModalities={"URONODE": ["URONODE", "127.0.0.1", node.dicom_port]},
    )
    yield orthanc, http, dicom, node
    orthanc.stop()


def job_states(node: Node) -> list[str]:
    return [r["state"] for r in query(node.data_dir, "SELECT state FROM jobs ORDER BY id")]


def key_images_in_orthanc(http: int, study: str) -> list[str]:
    """The SOP Instance UIDs the study's one key object selection flags, read from Orthanc."""
    (series,) = [s for s in qido(http, f"studies/{study}/series") if s["00080060"]["Value"] == ["KO"]]
    (kos,) = qido(http, f"studies/{study}/series/{series['0020000E']['Value'][0]}/metadata")
    items = kos["0040A730"]["Value"]  # ContentSequence
    return [i["00081199"]["Value"][0]["00081155"]["Value"][0] for i in items if i["0040A040"]["Value"] == ["IMAGE"]]


def test_auto_routed_series_gets_seg_sc_sr_and_key_objects_back_in_its_study(
    pacs_and_node: tuple[Proc, int, int, Node], tmp_path: Path
) -> None:
    orthanc, http, dicom, node = pacs_and_node
    phantom = generate_phantom(11, rows=512, slice_spacing=2.5, slices=24, coverage=(0.72, 0.88), n_stones=3,
                               stone_sites=("kidney",))  # two large kidney stones and a small one
    write_series(phantom, tmp_path / "ct")
    assert storescu(dicom, tmp_path / "ct", called="ORTHANC", calling="SCANNER").returncode == 0
    wait_until(lambda: job_states(node) == ["delivered"], 240, "the job to be delivered")
    found = modalities_in_study(http, phantom.study_instance_uid)
    assert found.get("SEG") == 1 and found.get("SR") == 1 and found.get("OT", 0) + found.get("CT", 0) > 0, found
    assert found.get("KO") == 1, found
    (findings,) = [json.loads(r["findings"]) for r in query(node.data_dir, "SELECT findings FROM jobs")]
    with_stones = {uid for stone in findings["stones"] for uid in stone["sop_instance_uids"]}
    flagged = key_images_in_orthanc(http, phantom.study_instance_uid)
    assert with_stones and set(flagged) == with_stones and len(flagged) == len(with_stones)
    ct = qido(http, f"studies/{phantom.study_instance_uid}/series/{phantom.series_instance_uid}/instances")
    assert set(flagged) <= {i["00080018"]["Value"][0] for i in ct}  # slices of the CT series Orthanc holds
    # the results as the worker stored them carry the node's implementation identity, not highdicom's (review 21)
    stored = query(node.data_dir, "SELECT path FROM instances WHERE manufacturer = 'uronode'")
    assert stored and {(meta.ImplementationClassUID, meta.ImplementationVersionName)
                       for meta in (pydicom.filereader.read_file_meta_info(r["path"]) for r in stored)} == {
        ("2.25.163385317616489218133917553546152620637", IMPLEMENTATION_VERSION_NAME)}
    # each stone's images as the report numbers them: the CT images' own numbers, as the PACS holds them
    number = {i["00080018"]["Value"][0]: int(i["00200013"]["Value"][0]) for i in ct}
    assert findings["image_numbering"] == "instance"
    assert all(stone["image_numbers"] == [number[uid] for uid in stone["sop_instance_uids"]]
               for stone in findings["stones"])
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/jobs?expand", timeout=10) as response:
        routed = [j for j in json.load(response) if j["Type"] == "DicomModalityStore"]
    assert len(routed) == 1  # the results never went back to the node
    events = [json.loads(line) for line in (node.data_dir / "audit.log").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert "series_complete" in kinds and "job_finished" in kinds and "delivery" in kinds
    finished = next(e for e in events if e["event"] == "job_finished")
    assert finished["stones"] >= 1
    assert len(finished["results"]) == found["SEG"] + found["SR"] + found["OT"] + found["KO"]
    assert all(e["outcome"] == "delivered" for e in events if e["event"] == "delivery")
    assert "Synthetic" not in (node.data_dir / "audit.log").read_text()  # no patient names in the audit log


def test_modality_push_without_stones_yields_an_sr_and_one_summary_image(
    pacs_and_node: tuple[Proc, int, int, Node], tmp_path: Path
) -> None:
    orthanc, http, dicom, node = pacs_and_node
    phantom = generate_phantom(8, rows=128, slice_spacing=2.0, coverage=(0.66, 0.96), n_stones=0, n_mimics=0)
    write_series(phantom, tmp_path / "ct")
    assert storescu(node.dicom_port, tmp_path / "ct", calling="CTSCANNER").returncode == 0  # straight to the node
    wait_until(lambda: job_states(node) == ["delivered"], 240, "the job to be delivered")
    wait_until(lambda: {"SR", "OT"} <= set(modalities_in_study(http, phantom.study_instance_uid)), 30,
               "the SR and the summary image in Orthanc")
    assert modalities_in_study(http, phantom.study_instance_uid) == {"SR": 1, "OT": 1}  # no SEG, no key images


def test_node_killed_while_orthanc_is_down_still_delivers_each_result_once(
    start_node: Callable[..., Node], tmp_path: Path
) -> None:
    http, dicom = free_port(), free_port()
    destination = [{"name": "pacs", "kind": "dicom", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": dicom}]
    env = {
        **WITH_WORKER,
        "URONODE_DELIVERY__DESTINATIONS": json.dumps(destination),
        "URONODE_DELIVERY__BACKOFF_S": "0.5",
        "URONODE_DELIVERY__BACKOFF_MAX_S": "1",
    }
    data = tmp_path / "node"
    node = start_node(data, **env)
    phantom = generate_phantom(11, rows=512, slice_spacing=2.5, slices=24, coverage=(0.72, 0.88), n_stones=3,
                               stone_sites=("kidney",))
    write_series(phantom, tmp_path / "ct")
    assert storescu(node.dicom_port, tmp_path / "ct", calling="CTSCANNER").returncode == 0
    # Orthanc is not running: the results are made, then every delivery fails and waits.
    wait_until(lambda: job_states(node) == ["delivering"], 240, "the results to be waiting for Orthanc")
    wait_until(lambda: bool(query(data, "SELECT 1 FROM deliveries WHERE attempts > 0")), 30, "a failed try")
    owed = len(query(data, "SELECT 1 FROM deliveries"))
    assert node.proc is not None
    node.kill()  # SIGKILL in the middle of the retries
    restarted = start_node(data, **env)
    orthanc = start_orthanc(tmp_path / "orthanc", http_port=http, dicom_port=dicom)
    try:
        wait_until(lambda: job_states(restarted) == ["delivered"], 120, "delivery once Orthanc is up")
        found = modalities_in_study(http, phantom.study_instance_uid)
        assert found.get("SEG") == 1 and found.get("SR") == 1, found
        assert sum(found.values()) == owed  # every result, and each exactly once
    finally:
        orthanc.stop()


def test_results_go_back_to_the_scanner_that_sent_the_series(start_node: Callable[..., Node], tmp_path: Path) -> None:
    from tests.peers.processes import start_storescp

    scanner_port = free_port()
    scanner = start_storescp(tmp_path / "scanner-inbox", scanner_port, ae="CTSCANNER")
    try:
        node = start_node(
            **WITH_WORKER,
            URONODE_DELIVERY__DESTINATIONS='[{"name": "back", "kind": "sender"}]',
            URONODE_DELIVERY__KNOWN_AES=json.dumps({"CTSCANNER": {"host": "127.0.0.1", "port": scanner_port}}),
        )
        phantom = generate_phantom(8, rows=128, slice_spacing=2.0, coverage=(0.66, 0.96), n_stones=0, n_mimics=0)
        write_series(phantom, tmp_path / "ct")
        assert storescu(node.dicom_port, tmp_path / "ct", calling="CTSCANNER").returncode == 0
        wait_until(lambda: job_states(node) == ["delivered"], 240, "the results to reach the scanner")
        import pydicom

        # no stones: the SR and the one summary image (probe 42)
        received = sorted((pydicom.dcmread(p) for p in (tmp_path / "scanner-inbox").iterdir()),
                          key=lambda ds: str(ds.Modality))
        assert [ds.Modality for ds in received] == ["OT", "SR"]
        assert all(ds.StudyInstanceUID == phantom.study_instance_uid and ds.Manufacturer == "uronode"
                   for ds in received)
    finally:
        scanner.stop()


def test_a_series_completed_again_by_late_slices_replaces_its_results_where_they_are_shown(
    pacs_and_node: tuple[Proc, int, int, Node], tmp_path: Path
) -> None:
    """The first results are superseded, not overwritten under their UIDs (Orthanc, like many archives, keeps the
    first copy of a UID and drops what comes after): the new ones are new instances in result series of their own
    (so an archive without IOCM shows two coherent runs, not one series of both: probe 18), the node's store
    keeps only them, and the PACS gets a rejection note (IHE IOCM) for the ones it holds, naming the CT series."""
    orthanc, http, dicom, node = pacs_and_node
    phantom = generate_phantom(11, rows=512, slice_spacing=2.5, slices=24, coverage=(0.72, 0.88), n_stones=3,
                               stone_sites=("kidney",))
    files = sorted(write_series(phantom, tmp_path / "ct"))
    assert storescu(node.dicom_port, files[:20], calling="CTSCANNER").returncode == 0
    wait_until(lambda: job_states(node) == ["delivered"], 240, "the first job to be delivered")
    first = set(sop_instance_uids_in_study(http, phantom.study_instance_uid))
    own = "SELECT sop_instance_uid, series_instance_uid FROM instances WHERE manufacturer = 'uronode'"
    first_series = {r["series_instance_uid"] for r in query(node.data_dir, own)}
    assert storescu(node.dicom_port, files[20:], calling="CTSCANNER").returncode == 0  # late slices re-open it
    wait_until(lambda: job_states(node) == ["delivered", "delivered"], 240, "the second job to be delivered")

    events = [json.loads(line) for line in (node.data_dir / "audit.log").read_text().splitlines()]
    runs = [set(e["results"]) for e in events if e["event"] == "job_finished"]
    assert len(runs) == 2 and runs[0] == first and not runs[0] & runs[1]  # other input: other instances
    (superseded,) = [e for e in events if e["event"] == "results_superseded"]
    assert set(superseded["instances"]) == runs[0]
    # The first job says which one replaced its results (the upload page follows it).
    jobs = sorted(r["id"] for r in query(node.data_dir, "SELECT id FROM jobs"))
    api = f"http://127.0.0.1:{node.http_port}/api/jobs"
    assert [json.loads(urllib.request.urlopen(f"{api}/{j}", timeout=30).read())["superseded_by"] for j in jobs] == [
        jobs[1], None]
    # The node shows the current analysis only, in result series of its own.
    mine = {r["sop_instance_uid"]: r["series_instance_uid"] for r in query(node.data_dir, own)}
    assert set(mine) == runs[1] and not set(mine.values()) & first_series
    assert len(set(mine.values())) == len(first_series)  # SEG, overlays, SR, key objects: one series each
    # Orthanc holds both runs' results, and the note that rejects the first.
    held = sop_instance_uids_in_study(http, phantom.study_instance_uid)
    assert len(held) == len(set(held)) and runs[0] | runs[1] <= set(held)
    (note_series,) = [s for s in qido(http, f"studies/{phantom.study_instance_uid}/series")
                      if s["0008103E"]["Value"] == ["AI urinary stones - superseded, series 1 (rejection note)"]]
    (note,) = qido(http, f"studies/{phantom.study_instance_uid}/series/{note_series['0020000E']['Value'][0]}/metadata")
    assert note["0040A043"]["Value"][0]["00080100"]["Value"] == ["113001"]  # Rejected for Quality Reasons
    rejected = {i["00081199"]["Value"][0]["00081155"]["Value"][0] for i in note["0040A730"]["Value"]
                if "00081199" in i}
    assert rejected == runs[0]
    # The new report names the one it replaces (Predecessor Documents Sequence), as the PACS holds it.
    reports = {}
    for series in qido(http, f"studies/{phantom.study_instance_uid}/series?Modality=SR"):
        for report in qido(http, f"studies/{phantom.study_instance_uid}/series/{series['0020000E']['Value'][0]}"
                                 "/metadata"):
            reports[report["00080018"]["Value"][0]] = report
    (old_report,) = set(reports) & runs[0]
    (new_report,) = set(reports) & runs[1]
    assert "0040A360" not in reports[old_report]
    (predecessor,) = reports[new_report]["0040A360"]["Value"]
    assert predecessor["0020000D"]["Value"] == [phantom.study_instance_uid]
    named = [ref["00081155"]["Value"][0] for series in predecessor["00081115"]["Value"]
             for ref in series["00081199"]["Value"]]
    assert named == [old_report]


def test_a_series_whose_images_all_moved_to_another_has_its_results_withdrawn_at_the_pacs(
    pacs_and_node: tuple[Proc, int, int, Node], tmp_path: Path
) -> None:
    """Probe 32: the series' images sent again in another series (split or corrected at the PACS, the same SOP
    Instance UIDs) are analysed as that series; the emptied series' results are withdrawn: out of the node's
    store, and a rejection note that says why goes to the PACS that holds them."""
    orthanc, http, dicom, node = pacs_and_node
    phantom = generate_phantom(12, rows=512, slice_spacing=2.5, slices=20, coverage=(0.72, 0.88), n_stones=2,
                               stone_sites=("kidney",))
    files = sorted(write_series(phantom, tmp_path / "ct"))
    assert storescu(node.dicom_port, files, calling="CTSCANNER").returncode == 0
    wait_until(lambda: job_states(node) == ["delivered"], 240, "the first job to be delivered")
    first = set(sop_instance_uids_in_study(http, phantom.study_instance_uid))
    moved_series = pydicom.uid.generate_uid(entropy_srcs=["uronode-test", "moved", phantom.series_instance_uid])
    moved = tmp_path / "moved"
    moved.mkdir()
    for path in files:
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = moved_series
        ds.SeriesNumber = 7
        ds.save_as(moved / path.name, enforce_file_format=True)
    assert storescu(node.dicom_port, sorted(moved.iterdir()), calling="CTSCANNER").returncode == 0
    wait_until(lambda: job_states(node) == ["delivered", "delivered"], 240, "the moved series' job to be delivered")

    events = [json.loads(line) for line in (node.data_dir / "audit.log").read_text().splitlines()]
    runs = [set(e["results"]) for e in events if e["event"] == "job_finished"]
    (withdrawn,) = [e for e in events if e["event"] == "results_withdrawn"]
    assert withdrawn["series_instance_uid"] == phantom.series_instance_uid and withdrawn["job_id"] is None
    assert set(withdrawn["instances"]) == runs[0] and first == runs[0]
    own = "SELECT sop_instance_uid FROM instances WHERE manufacturer = 'uronode'"
    assert {r["sop_instance_uid"] for r in query(node.data_dir, own)} == runs[1]  # the node shows the moved series'
    note_series = [s for s in qido(http, f"studies/{phantom.study_instance_uid}/series")
                   if s["0008103E"]["Value"][0].endswith("(rejection note)")]
    assert len(note_series) == 1, note_series
    (note,) = qido(http, f"studies/{phantom.study_instance_uid}/series/{note_series[0]['0020000E']['Value'][0]}"
                         "/metadata")
    rejected = {i["00081199"]["Value"][0]["00081155"]["Value"][0] for i in note["0040A730"]["Value"]
                if "00081199" in i}
    assert rejected == runs[0]
    (text,) = [i["0040A160"]["Value"][0] for i in note["0040A730"]["Value"] if i["0040A040"]["Value"] == ["TEXT"]]
    assert "withdrawn: every image of that series was sent again in another series" in text
