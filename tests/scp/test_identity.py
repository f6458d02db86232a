"""The node tells its peers what it is: uronode's Implementation Class UID and Version Name on every
association it accepts or makes (it sent pynetdicom's), as DCMTK's own debug output shows them."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from scp.scu import echo
from tests.peers.processes import DCMTK_ENV, Node, free_port, port_open, require, wait_until
from uronode.dicomfile import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME


def _theirs(log: str) -> tuple[str, str]:
    """DCMTK's 'Their Implementation Class UID / Version Name' lines (-d): the peer's identity."""
    values = {}
    for line in log.splitlines():
        for key in ("Their Implementation Class UID:", "Their Implementation Version Name:"):
            if key in line:
                values[key] = line.split(key, 1)[1].strip()
    return values.get("Their Implementation Class UID:", ""), values.get("Their Implementation Version Name:", "")


def test_the_listener_answers_as_uronode(start_node: Callable[..., Node]) -> None:
    node = start_node()
    run = subprocess.run([require("echoscu"), "-d", "-aet", "ECHOSCU", "-aec", "URONODE", "127.0.0.1",
                          str(node.dicom_port)], capture_output=True, text=True, env=DCMTK_ENV, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert _theirs(run.stdout + run.stderr) == (IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME)


def test_the_node_calls_as_uronode(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "storescp.log"
    with log.open("wb") as out:
        peer = subprocess.Popen([require("storescp"), "-d", "-aet", "STORESCP", "-od", str(tmp_path), str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=DCMTK_ENV)
    try:
        wait_until(lambda: port_open(port), 20, "storescp to listen")
        assert echo("127.0.0.1", port, "STORESCP", "URONODE").ok
    finally:
        peer.terminate()
        peer.wait(10)
    assert _theirs(log.read_text()) == (IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME)
    assert IMPLEMENTATION_VERSION_NAME.startswith("URONODE_")
