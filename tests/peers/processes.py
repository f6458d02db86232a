"""Start and stop real peers: the node, DCMTK storescp, Orthanc. Bounded polls, never bare sleeps."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise FileNotFoundError(f"{tool} is not installed; the test set-up (./run test) installs it")
    return path


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return int(self.popen.returncode)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Node:
    """A real ``uronode serve`` process."""

    data_dir: Path
    dicom_port: int
    http_port: int
    ae_title: str = "URONODE"
    extra_env: dict[str, str] = field(default_factory=dict)
    # where the process starts; ``python -m uronode`` imports from there first (a benchmark runs an earlier
    # revision's checkout this way, beside the current code)
    cwd: Path | None = None
    proc: Proc | None = None

    def start(self, timeout: float = 60) -> Node:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir.parent / f"node-{self.data_dir.name}.log"
        env = {**os.environ, "URONODE_DICOMWEB__AUTH": "none", **self.extra_env}  # benchmarks: open HTTP
        cmd = [
            sys.executable,
            "-m",
            "uronode",
            "serve",
            "--host",
            "127.0.0.1",
            "--data-dir",
            str(self.data_dir),
            "--dicom-port",
            str(self.dicom_port),
            "--http-port",
            str(self.http_port),
            "--ae-title",
            self.ae_title,
        ]
        with log.open("ab") as out:
            popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.cwd)
        self.proc = Proc(popen, log)
        try:
            wait_until(
                # HTTP answers only once every receiving process accepts associations
                lambda: popen.poll() is not None or port_open(self.http_port),
                timeout,
                "the node to listen",
            )
        except BaseException:
            self.proc.stop()  # a node that never listened is not left running after its test
            raise
        if popen.poll() is not None:
            raise RuntimeError(f"the node exited with {popen.returncode}:\n{self.proc.log_text()}")
        return self

    def stop(self) -> int:
        return self.proc.stop() if self.proc else 0

    def kill(self) -> None:
        if self.proc:
            self.proc.kill()


def storescu(
    port: int, files: list[Path] | Path, *, called: str = "URONODE", calling: str = "STORESCU", extra: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """DCMTK storescu: one association for everything given (a folder is sent whole)."""
    cmd = [require("storescu"), "-aet", calling, "-aec", called, *(extra or []), "127.0.0.1", str(port)]
    if isinstance(files, Path):
        cmd += ["+sd", str(files)]
    else:
        cmd += [str(f) for f in files]
    return subprocess.run(cmd, capture_output=True, text=True, env=DCMTK_ENV, timeout=600)


def echoscu(port: int, *, called: str = "URONODE", calling: str = "ECHOSCU") -> subprocess.CompletedProcess[str]:
    cmd = [require("echoscu"), "-aet", calling, "-aec", called, "127.0.0.1", str(port)]
    return subprocess.run(cmd, capture_output=True, text=True, env=DCMTK_ENV, timeout=60)


def start_storescp(folder: Path, port: int, ae: str = "STORESCP", *, unique: bool = False,
                   options: Sequence[str] = ()) -> Proc:
    """DCMTK storescp writing what it receives into ``folder``; ``unique``: a new file for every instance
    received, so that an instance received twice shows as two files; ``options``: more of storescp's (a
    presentation context profile, a sleep, verbose)."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder.parent / f"storescp-{port}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(
            [require("storescp"), "-aet", ae, *(["+uf"] if unique else []), *options, "-od", str(folder), str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=DCMTK_ENV,
        )
    proc = Proc(popen, log)
    try:
        wait_until(lambda: port_open(port), 20, "storescp to listen")
    except BaseException:
        proc.kill()
        raise
    return proc


ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def orthanc_config(folder: Path, *, http_port: int, dicom_port: int, aet: str = "ORTHANC", **extra: object) -> Path:
    config = {
        "Name": "uronode-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": aet,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "Plugins": [str(ORTHANC_DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
        **extra,
    }
    path = folder / "orthanc.json"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2))
    return path


def start_orthanc(folder: Path, *, http_port: int, dicom_port: int, aet: str = "ORTHANC", **extra: object) -> Proc:
    config = orthanc_config(folder, http_port=http_port, dicom_port=dicom_port, aet=aet, **extra)
    log = folder / "orthanc.log"
    popen = subprocess.Popen(
        [require("Orthanc"), f"--logfile={log}", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=DCMTK_ENV,
    )
    proc = Proc(popen, log)

    def ready() -> bool:
        if popen.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {popen.returncode}:\n{proc.log_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/system", timeout=0.5):
                return port_open(dicom_port)
        except urllib.error.HTTPError:  # it answers (401 when authentication is on)
            return port_open(dicom_port)
        except OSError:
            return False

    try:
        wait_until(ready, 30, "Orthanc to answer")
    except BaseException:
        proc.kill()  # never leave a half-started Orthanc behind
        raise
    return proc
