"""One command line: the lab's commands are `uronode` subcommands, and `python -m inference` is gone."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from lab import experiment
from lab.train import TRAINING_SMALL_STONE_FRACTION
from uronode.app.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def test_the_lab_commands_and_predict_are_uronode_subcommands() -> None:
    parser = build_parser()
    for argv in (["synth", "--out", "x"], ["train"], ["evaluate"], ["experiment", "--out", "x"]):
        assert parser.parse_args(argv).func.__module__ == "lab.cli", argv
    assert parser.parse_args(["predict", "ct", "--out", "x"]).func.__module__ == "uronode.app.predict"


def test_the_experiment_takes_the_training_phantoms_share_of_small_stones_from_lab_train(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Defined once, next to training_phantom (lab.train), not repeated as the argument's default."""
    seen: list[float] = []

    def run(args: argparse.Namespace) -> int:
        seen.append(args.small_fraction)
        return 0

    monkeypatch.setattr(experiment, "run", run)
    parser = build_parser()
    for argv in (["experiment", "--out", "x"], ["experiment", "--out", "x", "--small-fraction", "0.5"]):
        args = parser.parse_args(argv)
        assert args.func(args) == 0
    assert seen == [TRAINING_SMALL_STONE_FRACTION, 0.5]


def test_there_is_no_second_command_line() -> None:
    done = subprocess.run([sys.executable, "-m", "inference", "--help"], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert done.returncode != 0
    assert "No module named inference.__main__" in done.stderr


def test_every_command_prints_its_help() -> None:
    """argparse reads a help text as a %-format: one bare percent sign ("the 95 % interval") made
    `uronode --help` end in a TypeError instead of the list of commands."""
    parser = build_parser()
    assert "compare" in parser.format_help() and "95 % interval" in parser.format_help()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(actions) == 1
    commands = actions[0].choices
    assert {"serve", "predict", "train", "evaluate", "choose", "compare"} <= set(commands)
    for name, command in commands.items():
        assert command.format_help().startswith(f"usage: uronode {name}"), name


def test_the_help_runs_as_a_command() -> None:
    done = subprocess.run([sys.executable, "-m", "uronode", "--help"], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: uronode" in done.stdout and "Traceback" not in done.stderr
