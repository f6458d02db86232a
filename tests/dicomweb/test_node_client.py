"""The remote worker's WADO-RS reader: the node's multipart body, part by part, and a body that breaks off."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from dicomweb.node_client import _boundary, _write_parts


def body(parts: list[bytes], boundary: str = "b0undary", close: bool = True) -> bytes:
    out = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\nContent-Length: {len(p)}\r\n\r\n".encode()
                   + p + b"\r\n" for p in parts)
    return out + (f"--{boundary}--\r\n".encode() if close else b"")


def test_each_part_becomes_a_file_whatever_bytes_it_holds(tmp_path: Path) -> None:
    parts = [b"DICM" + bytes(range(256)) * 3, b"\r\n--b0undary\r\n inside the data", b""]
    paths = _write_parts(io.BytesIO(body(parts)), b"b0undary", tmp_path)
    assert [p.read_bytes() for p in paths] == parts
    assert _boundary('multipart/related; type="application/dicom"; boundary="b0undary"') == b"b0undary"


@pytest.mark.parametrize("cut", [10, 80, -12])
def test_a_body_that_breaks_off_is_an_error_not_a_short_series(tmp_path: Path, cut: int) -> None:
    whole = body([b"x" * 100, b"y" * 100])
    with pytest.raises(ValueError, match="ended|part"):
        _write_parts(io.BytesIO(whole[:cut]), b"b0undary", tmp_path)
    with pytest.raises(ValueError, match="names no boundary"):
        _boundary("multipart/related")


def test_a_429_is_asked_again_after_its_retry_after_not_a_failed_job() -> None:
    """Review 31: a worker behind an address the node had locked after wrong guesses (a NAT, a proxy not
    trusted) failed its heartbeats and completions at once. The node's 429 itself: test_security_probe27."""
    import json
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from dicomweb.node_client import NodeClient

    asked: list[float] = []

    class Locked(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            asked.append(time.monotonic())
            if len(asked) < 3:
                self.send_response(429)
                self.send_header("Retry-After", "1")
                body = b'{"detail": "too many failed logins"}'
            else:
                self.send_response(200)
                body = json.dumps({"worker": "gpu-1"}).encode()
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Locked)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = NodeClient(f"http://127.0.0.1:{server.server_address[1]}", "token", patience_s=30)
        assert client.whoami() == "gpu-1"
        assert len(asked) == 3 and asked[1] - asked[0] >= 0.95 and asked[2] - asked[1] >= 0.95
    finally:
        server.shutdown()
        server.server_close()
