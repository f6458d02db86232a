import gzip
import json
import multiprocessing
import stat
from collections.abc import Callable
from pathlib import Path

from uronode.audit import AuditLog


def _append(folder: str, worker: int) -> None:
    log = AuditLog(Path(folder))
    for i in range(200):
        log.record("delivery", worker=worker, n=i, sop_instance_uid="1.2.3." + "4" * 50)


def _in_three_processes(append: Callable[[str, int], None], folder: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=append, args=(str(folder), w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)


def test_processes_append_whole_lines(tmp_path: Path) -> None:
    _in_three_processes(_append, tmp_path)
    lines = (tmp_path / "audit.log").read_text().splitlines()
    events = [json.loads(line) for line in lines]  # every line is a whole JSON object
    assert len(events) == 600
    assert {(e["worker"], e["n"]) for e in events} == {(w, i) for w in range(3) for i in range(200)}
    assert all(e["event"] == "delivery" and e["time"] > 0 for e in events)


def test_a_failure_to_write_is_logged_not_raised(tmp_path: Path) -> None:
    AuditLog(tmp_path / "missing-folder").record("http", path="/x")  # no exception


def _append_rotating(folder: str, worker: int) -> None:
    log = AuditLog(Path(folder), rotate_bytes=20_000)
    for i in range(400):
        log.record("delivery", worker=worker, n=i, sop_instance_uid="1.2.3." + "4" * 50)


def _events(folder: Path) -> list[dict[str, object]]:
    """Every event in the log, the renamed files and the compressed ones, each a whole JSON line."""
    events = []
    for path in sorted(folder.glob("audit*.log*")):
        text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
        events += [json.loads(line) for line in text.splitlines()]
    return events


def test_the_log_is_renamed_when_full_by_one_process_and_no_event_is_lost(tmp_path: Path) -> None:
    """Probe 29: the audit log grew without bound and no deployment rotated it."""
    _in_three_processes(_append_rotating, tmp_path)
    renamed = sorted(tmp_path.glob("audit-*.log"))
    # 1,200 events of about 120 bytes, 20 kB a file: about 7 renamed, fewer where a process found another
    # rotating and wrote on (a rotation is then made by the next write past the size)
    assert len(renamed) >= 2, renamed
    events = _events(tmp_path)
    assert sorted((e["worker"], e["n"]) for e in events) == [(w, i) for w in range(3) for i in range(400)]


def test_renamed_files_are_compressed_once_settled_and_nothing_is_deleted(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, rotate_bytes=1_000)
    for i in range(30):
        log.record("http", n=i)
    renamed = sorted(tmp_path.glob("audit-*.log"))
    assert renamed and (tmp_path / "audit.log").exists()
    assert log.compress_settled() == []  # just written: a process may still be writing its line into it
    packed = log.compress_settled(settled_s=0)
    assert sorted(packed) == [r.with_name(r.name + ".gz") for r in renamed]
    assert not list(tmp_path.glob("audit-*.log")) and not list(tmp_path.glob("*.part"))
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o640 for p in packed)
    assert [e["n"] for e in _events(tmp_path)] == list(range(30))


def test_a_rotation_another_process_just_made_is_not_made_again(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, rotate_bytes=100)
    log.record("http", path="/" + "x" * 200)  # full: renamed at once
    assert not (tmp_path / "audit.log").exists() and len(list(tmp_path.glob("audit-*.log"))) == 1
    log.record("http", path="/y")
    assert log.rotate() is None  # the new log is not full: another process's rotation came first
    assert len(list(tmp_path.glob("audit-*.log"))) == 1
