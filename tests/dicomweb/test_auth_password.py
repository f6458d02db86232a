"""The node's own HTTP password (probe 41): made at the first start and said so; a password file lost from a data
folder that holds a node's data is said as the fault it is (every client that kept the old one is refused)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dicomweb.auth import PASSWORD_FILE, http_password
from tests.uronode.test_store import encoded, put
from uronode.settings import Settings
from uronode.store import Store


def test_a_password_file_lost_from_a_used_data_folder_is_said_as_a_fault(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(storage={"data_dir": tmp_path})
    Store(tmp_path)  # the index, empty: a first start
    with caplog.at_level(logging.WARNING, logger="dicomweb.auth"):
        first = http_password(settings)
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "was made and stored" in caplog.text
    assert http_password(settings) == first  # kept
    put(Store(tmp_path), encoded(0))  # the node ran: it holds an instance
    (tmp_path / PASSWORD_FILE).unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dicomweb.auth"):
        second = http_password(settings)
    assert second != first
    (record,) = caplog.records
    assert record.levelname == "ERROR" and "was missing in a data folder that holds a node's data" in record.message
    assert "every client, browser and viewer that kept the old one is refused" in record.message
