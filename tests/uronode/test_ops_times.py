"""Times an operator reads carry their zone: the text log's timestamps are ISO 8601 with the offset from UTC,
and ``uronode jobs`` and ``uronode deliveries`` say when each row last changed (probe10, section 13: local
times with no zone, and no time at all in the admin commands)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from uronode.jobs import JobQueue
from uronode.outbox import Outbox
from uronode.store import Store

ISO_WITH_OFFSET = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{3})?[+-]\d\d:\d\d"


def run(*args: str, zone: str = "Europe/Zurich") -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("URONODE_")}, "TZ": zone}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, env=env)


def test_the_log_s_timestamps_are_iso_8601_with_the_offset_from_utc() -> None:
    script = ("import logging\nfrom uronode.logs import setup_logging\nsetup_logging('INFO')\n"
              "logging.getLogger('uronode.test').warning('hello')\n")
    before = time.time()
    done = run("-c", script, zone="Asia/Kolkata")  # +05:30: no zone could be taken for UTC by chance
    (line,) = done.stderr.splitlines()
    found = re.match(rf"({ISO_WITH_OFFSET}) WARNING \d+ uronode.test: hello$", line)
    assert found, line
    assert found.group(1).endswith("+05:30")
    assert abs(datetime.fromisoformat(found.group(1)).timestamp() - before) < 60


def test_jobs_and_deliveries_say_when_each_row_last_changed(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    with store.transaction() as conn:
        JobQueue(store).enqueue_in(conn, "1.2.3", "1.2.3.4", 1, "default")
        Outbox(store).enqueue_in(conn, destination="pacs", sop_instance_uid="1.2.3.5", sop_class_uid="1.2",
                                 path=tmp_path / "a.dcm", job_id=1)
    before = time.time()
    for command, header in (("jobs", "changed"), ("deliveries", "changed")):
        done = run("-m", "uronode", command, "--data-dir", str(tmp_path / "data"), zone="America/St_Johns")
        assert done.returncode == 0, done.stderr
        head, row = done.stdout.splitlines()
        assert header in head.split(), head
        stamps = re.findall(ISO_WITH_OFFSET, row)
        assert stamps, row
        when = datetime.fromisoformat(stamps[0])
        assert stamps[0][-6:] in ("-03:30", "-02:30")  # Newfoundland: standard or summer time
        assert abs(when.timestamp() - before) < 60
    pending = run("-m", "uronode", "deliveries", "--data-dir", str(tmp_path / "data"))
    assert "next try" in pending.stdout.splitlines()[0]
    assert len(re.findall(ISO_WITH_OFFSET, pending.stdout.splitlines()[1])) == 2  # changed, and its next try
