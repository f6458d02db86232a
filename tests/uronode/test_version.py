"""The release a node runs is named (probe 43 #5: every release called itself 0.1.0, in ``uronode --version``, in
every result's SoftwareVersions and in the Implementation Version Name of its associations and files)."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import tomllib
from pathlib import Path

from uronode import __version__
from uronode.dicomfile import IMPLEMENTATION_VERSION_NAME, implementation_version_name
from uronode.settings import default_models_dir

ROOT = Path(__file__).resolve().parents[2]


def test_the_release_is_a_date_and_pyproject_names_the_same() -> None:
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"] == __version__
    year, month, day, *again = __version__.split(".")
    released = datetime.date(int(year), int(month), int(day))  # a real date, ValueError where it is not
    assert datetime.date(2026, 12, 7) <= released and all(part.isdigit() for part in again)


def test_the_implementation_version_name_is_the_release_date_within_16_characters() -> None:
    assert implementation_version_name("2026.12.7") == "URONODE_20261207"
    assert implementation_version_name("2027.1.15.1") == "URONODE_20270115"  # a day's second release: its day
    assert implementation_version_name("0.1.0") == "URONODE_0.1.0"
    assert implementation_version_name("10.20.30-alpha") == "URONODE_10.20.30"  # cut to the SH's 16
    assert len(IMPLEMENTATION_VERSION_NAME) <= 16 and IMPLEMENTATION_VERSION_NAME.startswith("URONODE_")


def test_version_names_the_release_and_the_shipped_model() -> None:
    card = json.loads((default_models_dir() / "default" / "card.json").read_text())
    done = subprocess.run([sys.executable, "-m", "uronode", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"uronode {__version__} (shipped model: {card['name']} {card['version']})\n"
