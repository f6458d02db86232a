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
