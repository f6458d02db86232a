"""A real redis-server for the tests: on a unix socket of the test's own, persistence off."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.peers.processes import Proc, require, wait_until


@dataclass
class Redis:
    folder: Path
    proc: Proc | None = None

    @property
    def socket(self) -> Path:
        return self.folder / "redis.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}?db=0"

    def start(self) -> Redis:
        """Start it with nothing saved to disk (``save ""``, no append-only file): a restart starts empty."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        log = self.folder / "redis.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [require("redis-server"), "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
                 "--save", "", "--appendonly", "no", "--dir", str(self.folder)],
                stdout=out, stderr=subprocess.STDOUT,
            )
        self.proc = Proc(popen, log)
        wait_until(lambda: self.cli("PING") == "PONG", 20, "redis-server to answer")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def restart(self) -> None:
        self.stop()
        self.start()

    def cli(self, *command: str) -> str:
        result = subprocess.run([require("redis-cli"), "-s", str(self.socket), *command], capture_output=True,
                                text=True, timeout=10)
        return result.stdout.strip()
