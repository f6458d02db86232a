"""``--config`` goes before or after the subcommand; the listings show the newest rows and say when they
stop at ``--limit``; ``echo`` calls as the node's AE title (probe7, findings 1, 6 and 14).

In process, ``main([...])`` as the console script runs it, except where a real node answers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.peers.processes import Node
from uronode.app.cli import build_parser, main
from uronode.jobs import JobQueue
from uronode.outbox import Outbox
from uronode.store import Store

READS_SETTINGS = {
    "serve": [], "config": [], "echo": ["host", "104", "PACS"], "jobs": [], "deliveries": [], "retry": [],
    "purge": [], "requeue": ["1"], "worker": ["--node", "http://node:8080", "--token-file", "t"],
    "worker-token": ["w1", "--out", "t"],
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("URONODE_"):
            monkeypatch.delenv(key)


@pytest.mark.parametrize("command", sorted(READS_SETTINGS))
def test_every_command_that_reads_settings_takes_config_before_and_after_it(command: str) -> None:
    parser = build_parser()
    rest = READS_SETTINGS[command]
    assert parser.parse_args([command, *rest]).config is None
    assert parser.parse_args(["--config", "a.toml", command, *rest]).config == Path("a.toml")
    assert parser.parse_args([command, *rest, "--config", "b.toml"]).config == Path("b.toml")
    assert parser.parse_args(["--config", "a.toml", command, "--config", "b.toml", *rest]).config == Path("b.toml")


def node_with_config(tmp_path: Path) -> Path:
    """A node's data folder, and a config file naming it (as `./run serve --config F` and the admin use)."""
    Store(tmp_path / "data")
    config = tmp_path / "uronode.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n')
    return config


def test_config_after_the_subcommand_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = node_with_config(tmp_path)
    monkeypatch.chdir(tmp_path / "data")  # nowhere near a default ./uronode-data
    for command in (["jobs"], ["deliveries"], ["retry"], ["purge", "--older-than-days", "1", "--dry-run"]):
        assert main([*command, "--config", str(config)]) == 0, capsys.readouterr().err
        assert main(["--config", str(config), *command]) == 0, capsys.readouterr().err
    assert main(["config", "--config", str(config)]) == 0
    assert f'"data_dir": "{tmp_path / "data"}"' in capsys.readouterr().out


def test_data_dir_before_or_after_the_subcommand_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Probe 25: the README says the flag goes before or after the subcommand; before it was refused."""
    Store(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    for command in (["jobs"], ["deliveries"], ["retry"], ["purge", "--older-than-days", "1", "--dry-run"]):
        assert main([*command, "--data-dir", "data"]) == 0, capsys.readouterr().err
        assert main(["--data-dir", "data", *command]) == 0, capsys.readouterr().err
        assert main([f"--data-dir={tmp_path / 'elsewhere'}", *command, "--data-dir", "data"]) == 0  # the later wins
    assert main(["--data-dir", "data", "config"]) == 0
    assert '"data_dir": "data"' in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:  # a command without a data folder does not ignore it silently
        main(["--data-dir", "data", "echo", "127.0.0.1", "104", "PACS"])
    assert refused.value.code == 2
    assert "--data-dir does not apply to echo" in capsys.readouterr().err


def test_serve_with_config_after_the_subcommand_reads_it(tmp_path: Path) -> None:
    """As ``./run serve --config F`` runs it: the file's bad AE title stops start-up, so it was read."""
    config = tmp_path / "uronode.toml"
    config.write_text('[scp]\nae_title = "A_TITLE_FAR_TOO_LONG"\n')
    done = subprocess.run([sys.executable, "-m", "uronode", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, env=dict(os.environ), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "unrecognized arguments" not in done.stderr
    assert "'A_TITLE_FAR_TOO_LONG' is 20 characters long; the limit is 16" in done.stderr


def test_the_limit_flag_is_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("jobs", "deliveries"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--limit N" in capsys.readouterr().out


def test_deliveries_lists_the_newest_first_and_says_when_it_stops_at_the_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outbox = Outbox(Store(tmp_path), max_attempts=1)
    with outbox.store.transaction() as conn:
        for n in range(1, 8):
            outbox.enqueue_in(conn, destination="pacs", sop_instance_uid=f"1.2.3.{n}", sop_class_uid="1.2",
                              path=tmp_path / f"{n}.dcm", job_id=n)
    for item in outbox.due()["pacs"]:
        if item.sop_instance_uid != "1.2.3.7":
            outbox.mark_failed(item.id, "association rejected")  # six dead letters, the newest still pending

    assert main(["deliveries", "--data-dir", str(tmp_path), "--state", "dead", "--limit", "2"]) == 0
    out, err = capsys.readouterr()
    rows = out.splitlines()[1:]
    assert [r.split()[4] for r in rows] == ["1.2.3.6", "1.2.3.5"]  # today's dead letters, not the first ones
    assert err == "showing the newest 2 of 6 dead deliveries; more with --limit (e.g. --limit 20)\n"

    assert main(["deliveries", "--data-dir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert [r.split()[4] for r in out.splitlines()[1:]] == [f"1.2.3.{n}" for n in range(7, 0, -1)]
    assert err == ""  # all shown: nothing to say


def test_jobs_says_when_it_stops_at_the_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = Store(tmp_path)
    with store.transaction() as conn:
        for n in range(1, 5):
            JobQueue(store).enqueue_in(conn, "1.2", f"1.2.{n}", 1, "default")
    assert main(["jobs", "--data-dir", str(tmp_path), "--limit", "3"]) == 0
    out, err = capsys.readouterr()
    series = [next(word for word in row.split() if word.startswith("1.2.")) for row in out.splitlines()[1:]]
    assert series == ["1.2.4", "1.2.3", "1.2.2"]
    assert err == "showing the newest 3 jobs; more with --limit (e.g. --limit 30)\n"
    assert main(["jobs", "--data-dir", str(tmp_path), "--limit", "4"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("limit", ["0", "-1", "many"])
def test_the_limit_is_a_count_above_0(limit: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["jobs", "--data-dir", str(tmp_path), "--limit", limit])
    assert exited.value.code == 2
    assert f"argument --limit: must be a whole number greater than 0, not {limit!r}" in capsys.readouterr().err


def test_echo_calls_as_the_configured_ae_title(
    start_node: Callable[..., Node], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A peer that checks its callers knows the node by its AE title, not by ``URONODE``."""
    peer = start_node(URONODE_SCP__RESTRICT_CALLERS="true", URONODE_SCP__ALLOWED_CALLERS='["AI_NODE"]')
    config = tmp_path / "uronode.toml"
    config.write_text('[scp]\nae_title = "AI_NODE"\n')
    called = ["echo", "127.0.0.1", str(peer.dicom_port), "URONODE"]
    assert main([*called, "--config", str(config)]) == 0, capsys.readouterr().out
    assert "success" in capsys.readouterr().out
    assert main(called) == 1  # no config: the default title, which the peer does not know
    assert "rejected" in capsys.readouterr().out
    assert main([*called, "--calling-ae", "AI_NODE"]) == 0


def test_config_given_as_a_flag_and_as_a_variable_says_which_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Probe 53: ``--config`` beat ``URONODE_CONFIG`` without a word."""
    flagged, named = tmp_path / "flag.toml", tmp_path / "variable.toml"
    flagged.write_text("[scp]\nport = 1104\n")
    named.write_text("[scp]\nport = 2104\n")
    monkeypatch.setenv("URONODE_CONFIG", str(named))
    assert main(["config", "--config", str(flagged)]) == 0
    out, err = capsys.readouterr()
    assert '"port": 1104' in out and f"uronode: reading --config {flagged}, not URONODE_CONFIG={named}" in err
    assert main(["config", "--config", str(named)]) == 0  # the same file: nothing to say
    assert "not URONODE_CONFIG" not in capsys.readouterr().err
