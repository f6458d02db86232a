import json
import multiprocessing
from pathlib import Path

from uronode.audit import AuditLog


def _append(folder: str, worker: int) -> None:
    log = AuditLog(Path(folder))
    for i in range(200):
        log.record("delivery", worker=worker, n=i, sop_instance_uid="1.2.3." + "4" * 50)


def test_processes_append_whole_lines(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append, args=(str(tmp_path), w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    lines = (tmp_path / "audit.log").read_text().splitlines()
    events = [json.loads(line) for line in lines]  # every line is a whole JSON object
    assert len(events) == 600
    assert {(e["worker"], e["n"]) for e in events} == {(w, i) for w in range(3) for i in range(200)}
    assert all(e["event"] == "delivery" and e["time"] > 0 for e in events)


def test_a_failure_to_write_is_logged_not_raised(tmp_path: Path) -> None:
    AuditLog(tmp_path / "missing-folder").record("http", path="/x")  # no exception
