"""Load: eight associations at once, each with a 100-slice CT series, while clients read over DICOMweb.

Every series must become a delivered job, every result must be in Orthanc
exactly once, no send or read may fail. The node's peak memory (PSS of its
process tree) is printed and kept in the JUnit properties; bench/load.py runs
the same scenario at 512 x 512 and records the figures in docs/benchmarks.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.conftest import WITH_WORKER
from tests.load.scenario import run_load, write_load_series
from tests.peers.processes import Node, free_port, start_orthanc


def test_eight_series_at_once_while_clients_read(
    start_node: Callable[..., Node], tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    made = write_load_series(tmp_path / "series", series=8, slices=100, rows=256)
    http, dicom = free_port(), free_port()
    orthanc = start_orthanc(tmp_path / "orthanc", http_port=http, dicom_port=dicom)
    try:
        destination = [{"name": "pacs", "kind": "dicom", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": dicom}]
        node = start_node(**WITH_WORKER, URONODE_DELIVERY__DESTINATIONS=json.dumps(destination),
                          URONODE_SCP__COMPLETION_GRACE_S="1")
        outcome = run_load(node, http, made, readers=2, timeout_s=600)
    finally:
        orthanc.stop()
    print(json.dumps(outcome.to_json(), indent=1))
    record_property("peak_pss_mb", round(outcome.peak_pss_mb))
    assert outcome.problems() == []
    assert outcome.results_owed >= 8 and outcome.results_in_orthanc == outcome.results_owed
    assert outcome.reads > 0 and outcome.peak_pss_mb > 0
    assert node.proc is not None
    log = node.proc.log_text()
    assert "job 8 series" in log  # every process logs into it, the worker too ...
    assert "Synthetic" not in log and "SYNTH0001" not in log  # ... and none names the patient
