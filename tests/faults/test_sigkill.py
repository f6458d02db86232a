"""SIGKILL the node at every stage of a series' life; nothing accepted is lost, results arrive once.

One series goes through five runs of the node against a real Orthanc. The
node is killed (SIGKILL, no clean-up) in the middle of the association that
brings the series, after the series is stored but before it completes, in
the middle of inference, and in the middle of delivering the results. After
each restart the test checks what must have survived; at the end every
instance the node acknowledged is stored intact, the one job is delivered,
and Orthanc holds each result exactly once.

Orthanc runs a Lua filter that takes 0.3 s per received instance, so that the
delivery association lasts long enough to be interrupted.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from lab.synth import generate_phantom, write_series
from tests.conftest import WITH_WORKER, query
from tests.faults.checks import acknowledged, assert_stored_intact
from tests.peers.orthanc import modalities_in_study, sop_instance_uids_in_study
from tests.peers.processes import (
    DCMTK_ENV,
    Node,
    free_port,
    require,
    start_orthanc,
    storescu,
    wait_until,
)

SLOW_ORTHANC = """
function ReceivedInstanceFilter(dicom, origin, info)
  local started = os.clock()
  while os.clock() - started < 0.3 do end
  return true
end
"""


def jobs(data: Path) -> list[dict[str, int | str]]:
    """Each job's state (text) and attempts (int), in order."""
    return [dict(r) for r in query(data, "SELECT state, attempts FROM jobs ORDER BY id")]


def test_sigkill_at_every_stage_loses_nothing_and_delivers_each_result_once(
    start_node: Callable[..., Node], tmp_path: Path
) -> None:
    http, dicom = free_port(), free_port()
    lua = tmp_path / "slow.lua"
    lua.write_text(SLOW_ORTHANC)
    orthanc = start_orthanc(tmp_path / "orthanc", http_port=http, dicom_port=dicom, LuaScripts=[str(lua)])
    destination = [{"name": "pacs", "kind": "dicom", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": dicom}]
    delivery = {
        "URONODE_DELIVERY__DESTINATIONS": json.dumps(destination),
        "URONODE_DELIVERY__BACKOFF_S": "0.5",
        "URONODE_DELIVERY__BACKOFF_MAX_S": "1",
    }
    hold = {**delivery, "URONODE_SCP__COMPLETION_GRACE_S": "60", "URONODE_SCP__COMPLETION_QUIET_S": "120"}
    run = {**delivery, **WITH_WORKER}
    data = tmp_path / "node"
    phantom = generate_phantom(11, rows=512, slice_spacing=2.5, slices=100, coverage=(0.62, 0.92), n_stones=3,
                               stone_sites=("kidney",))
    sources = sorted(write_series(phantom, tmp_path / "ct"))
    try:
        # 1. Killed in the middle of the association that brings the series.
        node = start_node(data, **hold)
        sender = subprocess.Popen(
            [require("storescu"), "-v", "-aet", "CTSCANNER", "-aec", "URONODE", "127.0.0.1", str(node.dicom_port),
             *map(str, sources)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=DCMTK_ENV,
        )
        wait_until(lambda: len(query(data, "SELECT 1 FROM instances")) >= 5, 60, "the first instances", 0.005)
        node.kill()
        log, _ = sender.communicate(timeout=60)
        assert sender.returncode != 0, "the association outlived the node: the kill came too late"
        sent = acknowledged(log)
        # storescu sends one instance at a time: of the 5 or more stored, all but the last may have been
        # answered (a kill between storing an instance and answering it leaves it unacknowledged: the
        # sender's to send again; seen on a loaded machine)
        assert 4 <= len(sent) < len(sources), len(sent)

        # 2. Restarted: everything acknowledged is there. The sender tries again; killed before completion.
        node = start_node(data, **hold)
        assert_stored_intact(data, [Path(p) for p in sent])
        assert storescu(node.dicom_port, sources, calling="CTSCANNER").returncode == 0
        node.kill()
        assert jobs(data) == []  # not complete yet: the grace period had not passed

        # 3. Restarted with the model: the series completes, the job starts; killed mid-inference.
        node = start_node(data, **run)
        wait_until(lambda: [j["state"] for j in jobs(data)] == ["running"], 180, "the job to run", 0.01)
        node.kill()
        assert query(data, "SELECT 1 FROM deliveries") == []

        # 4. Restarted: the job runs again and delivery starts; killed while Orthanc is taking the results.
        node = start_node(data, **run)

        def delivering() -> bool:
            pending = query(data, "SELECT 1 FROM deliveries WHERE state = 'pending'")
            return bool(pending) and bool(sop_instance_uids_in_study(http, phantom.study_instance_uid))

        wait_until(delivering, 180, "the first result in Orthanc", 0.02)
        node.kill()
        owed = {r["sop_instance_uid"] for r in query(data, "SELECT sop_instance_uid FROM deliveries")}
        assert query(data, "SELECT 1 FROM deliveries WHERE state = 'pending'"), "the delivery had already finished"

        # 5. Restarted: the rest is delivered, nothing twice.
        node = start_node(data, **run)
        wait_until(lambda: [j["state"] for j in jobs(data)] == ["delivered"], 180, "the job to be delivered")
        assert jobs(data) == [{"state": "delivered", "attempts": 2}]  # claimed in runs 3 and 4, not again
        assert_stored_intact(data, sources)
        assert len(query(data, "SELECT 1 FROM instances WHERE series_instance_uid = ?",
                         phantom.series_instance_uid)) == len(sources)
        in_orthanc = sop_instance_uids_in_study(http, phantom.study_instance_uid)
        assert sorted(in_orthanc) == sorted(owed)  # every result, each once, none under a second UID
        found = modalities_in_study(http, phantom.study_instance_uid)
        assert found.get("SEG") == 1 and found.get("SR") == 1 and found.get("OT", 0) >= 1, found
    finally:
        orthanc.stop()
