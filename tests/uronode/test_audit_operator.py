"""Probe 51: the audit trail names the person behind an administrator's command, and a lookup of a patient."""

from __future__ import annotations

import argparse
import json
import os
import pwd
import socket
from pathlib import Path

import pytest

from lab import cli as lab_cli
from tests.uronode.test_cancel import _queued
from uronode.app.cli import LAB_COMMANDS, main
from uronode.audit import AuditLog
from uronode.store import Store


def _events(root: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (root / "audit.log").read_text().splitlines()]


def test_a_command_s_events_name_who_ran_it_and_the_node_s_do_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    store = Store(tmp_path / "data", fsync=False)
    job = _queued(store, tmp_path)
    account = pwd.getpwuid(os.geteuid()).pw_name
    monkeypatch.setenv("SUDO_USER", "alice")
    assert main(["cancel", str(job), "--reason", "sent to the wrong node", "--data-dir", str(store.root)]) == 0
    monkeypatch.delenv("SUDO_USER")
    assert main(["study", "--patient-id", "nobody-here", "--data-dir", str(store.root)]) == 1
    capsys.readouterr()
    AuditLog(store.root).record("retention", series_instance_uid="1.2.3")  # the node's own, after the commands
    cancelled, looked_up, own = _events(store.root)[-3:]
    assert cancelled["event"] == "job_cancelled" and cancelled["job_id"] == job
    assert cancelled["operator"] == f"alice as {account}" and cancelled["operator_host"] == socket.gethostname()
    # whom an operator looked for is in the trail, with who looked
    assert looked_up["event"] == "study_looked_up" and looked_up["patient_id"] == "nobody-here"
    assert looked_up["studies"] == 0 and looked_up["operator"] == account
    assert "operator" not in own and "operator_host" not in own


def test_only_the_model_s_tools_keep_the_caller_s_umask() -> None:
    """Review 50: a model trained under umask 027 could not be loaded by a node under another account; the lab's
    commands write no patient data, every other command's output is private (probe 51)."""
    commands = argparse.ArgumentParser().add_subparsers()
    lab_cli.register(commands)
    assert LAB_COMMANDS == set(commands._name_parser_map)
    assert not LAB_COMMANDS & {"predict", "reindex", "purge", "serve", "study", "jobs", "cancel"}
