"""The command line meets an administrator's mistakes with one sentence and an exit status, never a
traceback and never a silent wrong action. In process: ``main([...])`` as the console script runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factory import write_series
from tests.uronode.test_store import encoded, put
from uronode.app.cli import local_time, main
from uronode.jobs import JobQueue
from uronode.store import Store
from uronode.supersede import record_results
from uronode.types import JobState

NO_NODE = "give --data-dir or --config"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("URONODE_"):
            monkeypatch.delenv(key)


def test_the_package_s_own_errors_are_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A VolumeError (a path that does not exist) and a ModelError (a model name that does not) carry a
    sentence for a person: main() prints it instead of a traceback."""
    assert main(["predict", str(tmp_path / "nosuch"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"uronode: {tmp_path / 'nosuch'} does not exist\n"

    write_series(tmp_path / "series", 2)
    assert main(["predict", str(tmp_path / "series"), "--out", str(tmp_path / "out"), "--model", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("uronode: model 'no-such-model' not found") and err.count("\n") == 1


ADMIN = [["jobs"], ["deliveries"], ["retry"], ["purge", "--older-than-days", "30"], ["requeue", "1"], ["cancel", "1"]]


@pytest.mark.parametrize("command", ADMIN, ids=lambda c: c[0])
def test_admin_commands_refuse_a_folder_without_node_data_and_create_nothing(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    typo = tmp_path / "uronode-dta"
    assert main([*command, "--data-dir", str(typo)]) == 2
    assert capsys.readouterr().err == f"uronode: no node data in {typo.resolve()} (no index.sqlite3); {NO_NODE}\n"
    assert not typo.exists()

    unrelated = tmp_path / "images"
    (unrelated / "a.png").parent.mkdir()
    (unrelated / "a.png").write_bytes(b"")
    assert main([*command, "--data-dir", str(unrelated)]) == 2
    assert [p.name for p in unrelated.iterdir()] == ["a.png"]


def test_the_default_data_folder_is_refused_too_when_it_holds_no_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run from the wrong folder without --config: the default ./uronode-data is not made there."""
    monkeypatch.chdir(tmp_path)
    assert main(["jobs"]) == 2
    assert f"no node data in {(tmp_path / 'uronode-data').resolve()}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_admin_commands_read_an_existing_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = Store(tmp_path / "data")
    with store.transaction() as conn:
        job = JobQueue(store).enqueue_in(conn, "1.2.3", "1.2.3.4", 1, "default")
    assert main(["jobs", "--data-dir", str(tmp_path / "data")]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["id", "state", "tries", "worker", "model", "ct", "series", "changed", "reason"]
    changed = JobQueue(store).get(job)
    assert changed is not None
    assert row.split() == [str(job), "queued", "0", "default", "1.2.3.4", local_time(changed.updated_at)]
    assert main(["requeue", "999", "--data-dir", str(tmp_path / "data")]) == 1
    assert capsys.readouterr().err == "uronode: no job 999\n"
    assert main(["requeue", str(job), "--data-dir", str(tmp_path / "data")]) == 1
    assert capsys.readouterr().err == (f"uronode: job {job} is queued; only a failed or delivered job"
                                       " can be queued again\n")
    found = JobQueue(store).get(job)
    assert found is not None and found.state is JobState.QUEUED


@pytest.mark.parametrize("days", ["0", "-30", "-0.5", "nan", "inf", "-inf", "thirty"])
def test_purge_takes_only_a_number_of_days_greater_than_0(
    days: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """0 or less would delete every received series, also one received a second ago."""
    Store(tmp_path / "data")
    with pytest.raises(SystemExit) as exited:
        main(["purge", "--data-dir", str(tmp_path / "data"), f"--older-than-days={days}", "--dry-run"])
    assert exited.value.code == 2
    assert (f"argument --older-than-days: must be a number of days greater than 0, not {days!r}"
            in capsys.readouterr().err)


def test_purge_takes_a_fraction_of_a_day(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Store(tmp_path / "data")
    assert main(["purge", "--data-dir", str(tmp_path / "data"), "--older-than-days", "0.5", "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("would delete 0 series, 0 instances, 0.0 MB received more than 0.5 days")


def test_worker_token_needs_no_node_yet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A worker's token may be made before the node first starts (or for a tokens file kept elsewhere,
    as the Kubernetes secrets are): the tokens file is made, no store."""
    data = tmp_path / "data"
    assert main(["worker-token", "gpu-1", "--out", str(tmp_path / "token"), "--data-dir", str(data)]) == 0
    assert [p.name for p in data.iterdir()] == ["worker-tokens"]
    assert "token in" in capsys.readouterr().out


def test_a_worker_token_that_cannot_be_written_leaves_no_hash_behind(tmp_path: Path) -> None:
    """Found by probing: the hash was added to the tokens file before --out was written, so a folder or a
    missing parent as --out left a hash of a token nobody has."""
    data = tmp_path / "data"
    (tmp_path / "a-folder").mkdir()
    assert main(["worker-token", "gpu-1", "--out", str(tmp_path / "a-folder"), "--data-dir", str(data)]) == 2
    assert main(["worker-token", "gpu-1", "--out", str(tmp_path / "no-parent" / "token"), "--data-dir", str(data)]) == 1
    assert not (data / "worker-tokens").exists() or not (data / "worker-tokens").read_text().strip()
    assert main(["worker-token", "gpu-1", "--out", str(tmp_path / "token"), "--data-dir", str(data)]) == 0
    assert len((data / "worker-tokens").read_text().split("\n")[:-1]) == 1
    assert main(["worker-token", "gpu 2", "--out", str(tmp_path / "token2"), "--data-dir", str(data)]) == 2
    assert not (tmp_path / "token2").exists()  # a name refused leaves no token file either


def test_a_worker_token_that_fails_leaves_the_token_already_at_out_as_it_was(tmp_path: Path) -> None:
    """Found in review: --out was opened (truncated) before the name was checked and the hash recorded, so a
    refused name or a tokens file that could not be written emptied a working worker's token file."""
    data = tmp_path / "data"
    out = tmp_path / "gpu1.token"
    assert main(["worker-token", "gpu-1", "--out", str(out), "--data-dir", str(data)]) == 0
    working = out.read_text()
    assert main(["worker-token", "gpu 1", "--out", str(out), "--data-dir", str(data)]) == 2
    (data / "worker-tokens").rename(data / "kept")
    (data / "worker-tokens").mkdir()  # the tokens file cannot be opened for appending
    assert main(["worker-token", "gpu-1", "--out", str(out), "--data-dir", str(data)]) == 1
    assert out.read_text() == working
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "gpu1.token"]  # no staged file left behind


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["127.0.0.1", "104", "THIS_AE_TITLE_IS_TOO_LONG"],
         "argument AE: AE title 'THIS_AE_TITLE_IS_TOO_LONG' is 25 characters long; the limit is 16"),
        (["127.0.0.1", "104", "PEER", "--calling-ae", ""], "argument --calling-ae: AE title must not be empty"),
        (["127.0.0.1", "70000", "PEER"], "argument port: must be a port number, 1-65535, not '70000'"),
        (["127.0.0.1", "0", "PEER"], "argument port: must be a port number, 1-65535, not '0'"),
    ],
)
def test_echo_names_a_bad_ae_title_or_port(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["echo", *args, "--timeout", "1"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_echo_names_a_host_it_cannot_resolve(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["echo", "nosuch.invalid", "104", "PEER", "--timeout", "3"]) == 1
    assert capsys.readouterr().out.startswith("cannot resolve host 'nosuch.invalid' (")


def test_a_config_file_that_is_not_toml_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "uronode.toml"
    bad.write_text("[scp]\nport = [\n")
    assert main(["--config", str(bad), "jobs", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"uronode: config file {bad} is not valid TOML: ") and err.count("\n") == 1


def test_jobs_name_the_ct_series_and_a_job_whose_results_were_replaced(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Probe 22: a job was named by its series UID alone, and one whose results a later run replaced read as
    plainly delivered."""
    store = Store(tmp_path / "data")
    put(store, encoded(0, series="1.2.3.4", study="1.2.3", series_description="KUB 5.0mm BONE"))
    queue = JobQueue(store)
    findings = json.dumps({"model": {"name": "cascade", "version": "3.8.0"}, "stones": []})
    for run, result in ((1, "1.2.3.4.901"), (2, "1.2.3.4.902")):
        with store.transaction() as conn:
            queue.enqueue_in(conn, "1.2.3", "1.2.3.4", run, "default")
        job = queue.claim()
        assert job is not None
        with store.transaction() as conn:
            record_results(conn, job_id=job.id, source_series_uid="1.2.3.4", model="cascade 3.8.0",
                           sop_instance_uids=[result])
            queue.finish_in(conn, job.id, JobState.DELIVERED, findings=findings, seconds=1.0, worker="local")
    assert main(["jobs", "--data-dir", str(tmp_path / "data")]) == 0
    header, second, first = capsys.readouterr().out.splitlines()
    assert "#2 KUB 5.0mm BONE" in first and "#2 KUB 5.0mm BONE" in second  # the factory's SeriesNumber 2
    assert first.endswith("results superseded by job 2") and not second.rstrip().endswith("job 2")
    # the version each job ran with (probe 43: `default` alone did not tell two releases' runs apart)
    assert " default 3.8.0 " in first and " default 3.8.0 " in second


def test_jobs_into_a_pipe_closed_early_say_nothing_of_it(tmp_path: Path) -> None:
    """`uronode jobs | head` ended with 'uronode: [Errno 32] Broken pipe' (probe 22)."""
    store = Store(tmp_path / "data")
    with store.transaction() as conn:
        for n in range(1500):  # far more than a pipe holds
            JobQueue(store).enqueue_in(conn, "1.2.3", f"1.2.3.{n}", 1, "default")
    command = (f"{sys.executable} -m uronode jobs --data-dir {tmp_path / 'data'} --limit 1500 | head -n 1; "
               "exit ${PIPESTATUS[0]}")
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert done.stdout.split()[:3] == ["id", "state", "tries"]
    assert done.stderr == "" and done.returncode == 0, (done.returncode, done.stderr)
