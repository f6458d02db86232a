"""DICOM over TLS: the listener with a certificate, against DCMTK's storescu/echoscu built with OpenSSL."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import query
from tests.factory import write_series
from tests.peers.processes import DCMTK_ENV, Node, free_port, require


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run([require("openssl"), *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=uronode test CA",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    for name, cn in (("server", "127.0.0.1"), ("client", "CTSCANNER")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{name}.key",
                "-out", f"{name}.csr", cwd=d)
        (d / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1\n" if name == "server" else "basicConstraints=CA:FALSE\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=stranger",
            "-keyout", "stranger.key", "-out", "stranger.crt", cwd=d)
    return d


def dcmtk(tool: str, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require(tool), "-aet", "CTSCANNER", "-aec", "URONODE", *args, "127.0.0.1", str(port)],
                          capture_output=True, text=True, env=DCMTK_ENV, timeout=60)


def test_tls_with_client_certificates(start_node: Callable[..., Node], pki: Path, tmp_path: Path) -> None:
    node = start_node(
        URONODE_SCP__TLS_CERT_FILE=str(pki / "server.crt"),
        URONODE_SCP__TLS_KEY_FILE=str(pki / "server.key"),
        URONODE_SCP__TLS_CA_FILE=str(pki / "ca.crt"),
    )
    trusted = ["+tls", str(pki / "client.key"), str(pki / "client.crt"), "+cf", str(pki / "ca.crt")]
    assert dcmtk("echoscu", node.dicom_port, *trusted).returncode == 0
    _, series, _ = write_series(tmp_path / "ct", 3, size=32)
    sent = subprocess.run([require("storescu"), "-aet", "CTSCANNER", "-aec", "URONODE", *trusted, "127.0.0.1",
                           str(node.dicom_port), "+sd", str(tmp_path / "ct")],
                          capture_output=True, text=True, env=DCMTK_ENV, timeout=60)
    assert sent.returncode == 0, sent.stderr
    assert len(query(node.data_dir, "SELECT 1 FROM instances WHERE series_instance_uid = ?", series)) == 3
    # plain TCP, and TLS with a certificate the node's CA did not sign, are both refused
    assert dcmtk("echoscu", node.dicom_port).returncode != 0
    stranger = ["+tls", str(pki / "stranger.key"), str(pki / "stranger.crt"), "+cf", str(pki / "ca.crt")]
    assert dcmtk("echoscu", node.dicom_port, *stranger).returncode != 0
    assert dcmtk("echoscu", node.dicom_port, *trusted).returncode == 0  # and the node still serves
    # connections that never start their handshake, one per receiving process and more (review 37: the handshake
    # ran in the accepting thread and one such connection stopped its process's accepts): the scanner is served
    silent = [socket.create_connection(("127.0.0.1", node.dicom_port)) for _ in range(6)]
    try:
        started = time.monotonic()
        assert dcmtk("echoscu", node.dicom_port, *trusted).returncode == 0
        assert time.monotonic() - started < 8
    finally:
        for sock in silent:
            sock.close()


def test_tls_settings_are_checked_at_start_up(tmp_path: Path) -> None:
    from uronode.settings import ConfigError, load_settings

    with pytest.raises(ConfigError, match="go together"):
        load_settings(overrides={"scp": {"tls_cert_file": str(tmp_path / "x.crt")}})
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(overrides={"scp": {"tls_cert_file": str(tmp_path / "x.crt"), "tls_key_file": str(tmp_path / "x.key")}})


@pytest.mark.parametrize("key", ["junk", "passphrase"])
def test_a_key_the_node_cannot_load_stops_the_start_in_one_sentence(pki: Path, tmp_path: Path, key: str) -> None:
    """Probe 53: a key that is no PEM, or one protected by a passphrase (which asked for it on the node's stdin),
    passed the settings' checks; each receiving process died with a traceback, and the node after 2 minutes."""
    if key == "junk":
        (tmp_path / "server.key").write_text("not a key\n")
    else:
        openssl("pkey", "-in", str(pki / "server.key"), "-aes256", "-passout", "pass:secret", "-out",
                str(tmp_path / "server.key"), cwd=tmp_path)
    env = {**os.environ, "URONODE_SCP__TLS_CERT_FILE": str(pki / "server.crt"),
           "URONODE_SCP__TLS_KEY_FILE": str(tmp_path / "server.key"), "URONODE_INFERENCE__WORKERS": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "uronode", "serve", "--host", "127.0.0.1", "--data-dir", str(tmp_path / "data"),
         "--dicom-port", str(free_port()), "--http-port", str(free_port())],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=env)
    assert done.returncode == 2, done.stderr[-2000:]
    (said,) = done.stderr.strip().splitlines()
    checked = subprocess.run([sys.executable, "-m", "uronode", "config"], capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL, env=env)
    assert checked.returncode == 2 and checked.stderr.strip() == said  # config says what serve would
    assert said.startswith(f"uronode: scp TLS: {pki / 'server.crt'}, {tmp_path / 'server.key'} could not be loaded")
    assert ("protected by a passphrase" in said) == (key == "passphrase")
