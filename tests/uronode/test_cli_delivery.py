import subprocess
import sys
from pathlib import Path

from uronode.outbox import Outbox
from uronode.store import Store


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "uronode", *args], capture_output=True, text=True, timeout=60)


def test_retry_and_deliveries_commands(tmp_path: Path) -> None:
    outbox = Outbox(Store(tmp_path), max_attempts=1)
    with outbox.store.transaction() as conn:
        outbox.enqueue_in(conn, destination="pacs", sop_instance_uid="1.2.3.4", sop_class_uid="1.2", path=tmp_path / "a.dcm", job_id=3)
    (item,) = outbox.due()["pacs"]
    outbox.mark_failed(item.id, "association rejected")
    listed = run("deliveries", "--data-dir", str(tmp_path), "--state", "dead")
    assert listed.returncode == 0 and "1.2.3.4" in listed.stdout and "association rejected" in listed.stdout
    retried = run("retry", "--data-dir", str(tmp_path), "--job", "3")
    assert retried.returncode == 0 and "1 dead letter" in retried.stdout
    assert outbox.counts() == {"pending": 1}
