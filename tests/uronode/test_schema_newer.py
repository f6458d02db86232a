"""An index a newer uronode wrote is refused, not read and rewritten: going back to an older version after an
upgrade takes the backup made before it (docs/operations.md, "Upgrading uronode")."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from uronode.app.cli import main
from uronode.db import SCHEMA_VERSION, Database, DataDirUnusable
from uronode.store import Store


def _newer(data: Path) -> Path:
    Store(data)  # a node's data folder, as a first start makes it
    index = data / "index.sqlite3"
    with sqlite3.connect(index) as conn:
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    return index


def test_an_index_of_a_newer_schema_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    index = _newer(tmp_path / "data")
    with pytest.raises(DataDirUnusable, match=f"newer uronode \\(schema {SCHEMA_VERSION + 1}; this one knows up to "
                                              f"{SCHEMA_VERSION}\\)"):
        Database(index)
    with sqlite3.connect(index) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1


def test_the_admin_commands_say_so_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _newer(tmp_path / "data")
    assert main(["jobs", "--data-dir", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert "written by a newer uronode" in err and "Traceback" not in err
