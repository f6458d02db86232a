"""The node's background loops survive a failing round, and /readyz names a loop that stops beating.

Failures are injected into real loops: a round that raises, the real completion loop stuck on a
real SQLite write lock held by another connection, a loop whose thread ended; a poisoned row in
the index of a real ``uronode serve``. /readyz is asked of the node's own application
(``create_app``) or of the node process.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
import pytest
import uvicorn

from dicomweb.app import create_app
from dicomweb.ops import ReadyCheck
from tests.conftest import query
from tests.factory import uid, write_series
from tests.peers.processes import Node, free_port, storescu, wait_until
from tests.uronode.test_store import encoded, put
from uronode.completion import CompletionMonitor
from uronode.jobs import JobQueue
from uronode.loops import Loop, Loops
from uronode.settings import Settings, load_settings
from uronode.store import Store


@pytest.fixture
def loops() -> Iterator[Loops]:
    started = Loops()
    yield started
    started.stop()


def node_settings(data_dir: Path) -> Settings:
    return load_settings(overrides={
        "storage": {"data_dir": str(data_dir)},
        "inference": {"workers": 0},
        "dicomweb": {"auth": "none"},
    })


def execute(index: Path, sql: str) -> None:
    conn = sqlite3.connect(index, timeout=30, isolation_level=None)
    try:
        conn.execute(sql)
    finally:
        conn.close()


@contextlib.contextmanager
def serving(settings: Settings, loops: Loops, ready_checks: Sequence[ReadyCheck] = ()) -> Iterator[str]:
    """The node's HTTP application on uvicorn, as ``uronode serve`` runs it, on a free loopback port."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, loops, ready_checks), host="127.0.0.1", port=port,
                                           log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, name="http", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), 30, "the HTTP server")
        assert server.started
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def readyz(base: str) -> tuple[int, dict[str, object]]:
    response = httpx.get(f"{base}/readyz", timeout=30)
    return response.status_code, response.json()


def test_a_round_that_raises_is_logged_and_the_loop_goes_on(loops: Loops, caplog: pytest.LogCaptureFixture) -> None:
    rounds: list[int] = []

    def body() -> None:
        rounds.append(len(rounds))
        if len(rounds) == 2:
            raise RuntimeError("injected failure")

    loop = loops.add("flaky", body, 0.01)
    with caplog.at_level(logging.ERROR, logger="uronode.loops"):
        loops.start()
        wait_until(lambda: loop.failures == 1, 30, "the failing round")
        beat = loop.heartbeat
        wait_until(lambda: len(rounds) >= 5 and loop.heartbeat > beat, 30, "rounds after the failure")
    assert loop.failures == 1 and loops.problems() == []
    (record,) = [r for r in caplog.records if "loop flaky" in r.getMessage()]
    assert record.exc_info is not None and "injected failure" in str(record.exc_info[1])


def test_readyz_names_the_completion_loop_stuck_on_a_lock(tmp_path: Path, loops: Loops) -> None:
    settings = node_settings(tmp_path / "data")
    store = Store(settings.storage.data_dir)
    series = uid("stuck")
    put(store, encoded(0, series=series))
    monitor = CompletionMonitor(store, JobQueue(store), grace_s=0.0, quiet_s=30.0, model="default")
    completion = loops.add("completion", monitor.complete_due, 0.02, stale_after_s=0.5)
    with serving(settings, loops) as base:
        # another connection holds the write lock: completing the series waits on it (busy timeout 30 s)
        holder = sqlite3.connect(settings.storage.data_dir / "index.sqlite3", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            loops.start()
            wait_until(lambda: readyz(base)[0] == 503, 25, "/readyz to answer 503")
            status, body = readyz(base)
            assert status == 503 and "loop completion has not finished a round" in str(body["detail"])
            assert query(settings.storage.data_dir, "SELECT state FROM series")[0]["state"] == "receiving"
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        # the lock gone, the round ends, the series completes and the loop beats again
        wait_until(lambda: readyz(base)[0] == 200, 60, "/readyz to answer 200 again")
        assert readyz(base)[1]["loops"] == ["completion"]
    assert query(settings.storage.data_dir, "SELECT state FROM series")[0]["state"] == "complete"
    assert completion.failures == 0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the injected SystemExit
def test_readyz_names_a_loop_whose_thread_ended(tmp_path: Path, loops: Loops) -> None:
    ended = threading.Event()

    def body() -> None:
        ended.set()
        raise SystemExit  # not an Exception: it ends the thread, as a bug in the loop itself would

    loops.add("completion", lambda: None, 0.02)
    loops.add("delivery", body, 0.02)
    with serving(node_settings(tmp_path / "data"), loops) as base:
        assert readyz(base) == (503, {"detail": "loop completion has not started; loop delivery has not started"})
        loops.start()
        wait_until(ended.is_set, 30, "the delivery loop's round")
        wait_until(lambda: readyz(base)[0] == 503, 30, "/readyz to see the ended thread")
        assert readyz(base) == (503, {"detail": "loop delivery has stopped"})


def test_loop_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        Loop("x", lambda: None, 0)
    with pytest.raises(ValueError, match="stale_after_s"):
        Loop("x", lambda: None, 1.0, stale_after_s=-1)
    loops = Loops()
    loops.add("x", lambda: None, 1.0)
    with pytest.raises(ValueError, match="already"):
        loops.add("x", lambda: None, 1.0)


def test_the_node_runs_its_background_work_as_watched_loops(start_node: Callable[..., Node]) -> None:
    node = start_node(
        URONODE_STORAGE__RETENTION_DAYS="30",
        URONODE_DELIVERY__DESTINATIONS='[{"name": "pacs", "kind": "dicom", "ae_title": "PACS", '
                                       '"host": "127.0.0.1", "port": 9}]',
    )
    response = httpx.get(f"http://127.0.0.1:{node.http_port}/readyz", timeout=30)
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ready", "loops": ["completion", "seen", "receivers", "delivery", "retention"]}
    # no model worker here and no remote ones: said at start (probe 20: jobs waited for ever, nothing said why)
    assert node.proc is not None
    assert "inference.workers is 0 and queue.backend is 'sqlite': series are queued and no job will run here" \
        in node.proc.log_text()


def test_the_node_completes_series_again_once_a_failing_round_stops_failing(
    start_node: Callable[..., Node], tmp_path: Path
) -> None:
    """A row the completion check cannot read makes every round raise; the loop logs each failure and
    goes on, and the series waiting behind it completes once the row is gone. (Before the loop
    helper, the completion thread died at the first such round and no series completed again.)"""
    node = start_node()
    assert node.proc is not None
    log = node.proc.log_text
    index = node.data_dir / "index.sqlite3"
    execute(index, "INSERT INTO series (series_instance_uid, study_instance_uid, state, first_received_at,"
                   " last_received_at) VALUES ('2.25.1', '2.25.2', 'receiving', 0, 'not a time')")
    wait_until(lambda: "loop completion: a round failed" in log(), 30, "a failed round in the log")
    _, series, _ = write_series(tmp_path / "ct", 3, size=32)
    assert storescu(node.dicom_port, tmp_path / "ct").returncode == 0
    execute(index, "DELETE FROM series WHERE series_instance_uid = '2.25.1'")

    def complete() -> bool:
        rows = query(node.data_dir, "SELECT state FROM series WHERE series_instance_uid = ?", series)
        return bool(rows) and rows[0]["state"] == "complete"

    wait_until(complete, 30, "the series to complete")
    assert httpx.get(f"http://127.0.0.1:{node.http_port}/readyz", timeout=30).status_code == 200
    assert "TypeError" in log()
