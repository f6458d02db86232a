"""Every result the node makes reaches a PACS that accepts Implicit VR Little Endian alone, intact.

Probe 25: the sender re-encoded the top-level data set only; the items of its sequences kept their
Explicit VR bytes inside an Implicit VR stream, so DCMTK's storescp aborted on the SEG
("ReferencedInstanceSequence larger than remaining bytes") and every result of the job became a dead
letter. The earlier regression test sent CT slices, which have no sequences.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.uid import ImplicitVRLittleEndian

from scp.sender import Outgoing, store_files
from tests.peers.processes import free_port, start_storescp
from tests.writers.conftest import Case, dciodvfy


def _content(ds: pydicom.Dataset) -> dict[str, object]:
    """The data set as DICOM JSON (every element, every item of every sequence), Pixel Data left out: its VR is
    not in an implicit VR stream (8-bit pixels read back as OW), its bytes are compared apart."""
    content = ds.to_json_dict(bulk_data_threshold=1 << 40)
    content.pop("7FE00010", None)
    return content


def test_seg_sc_sr_and_ko_reach_an_implicit_vr_only_pacs_element_for_element(stones: Case, tmp_path: Path) -> None:
    files = [Path(p) for p in stones.paths]
    sent = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, files)}
    assert {str(ds.Modality) for ds in sent.values()} == {"SEG", "OT", "SR", "KO"}
    port = free_port()
    scp = start_storescp(tmp_path / "received", port, "DEST", options=["+xi"])  # Implicit VR Little Endian only
    try:
        results = store_files([Outgoing(p, str(sent_ds.SOPClassUID), uid)
                               for p, (uid, sent_ds) in zip(files, sent.items(), strict=True)],
                              host="127.0.0.1", port=port, called_ae="DEST")
    finally:
        scp.stop()
    assert [(r.ok, r.reason) for r in results] == [(True, None)] * len(files)
    received = sorted((tmp_path / "received").iterdir())
    assert len(received) == len(files)
    for path in received:
        got = pydicom.dcmread(path)
        assert got.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        original = sent[str(got.SOPInstanceUID)]
        assert _content(got) == _content(original), got.Modality
        assert got.get("PixelData") == original.get("PixelData"), got.Modality
        errors, _ = dciodvfy(path)
        assert errors == [], (got.Modality, errors)
