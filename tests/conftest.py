"""Shared fixtures: a real node on loopback, its index, synthetic series; Hypothesis's profiles."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

from tests.peers.processes import Node, free_port
from tests.peers.redis import Redis

if TYPE_CHECKING:  # Playwright is imported when a browser test starts the browser
    from playwright.sync_api import BrowserContext

# Property tests run derandomized under CI (each test's examples come from a hash of the test, the
# same on every run), so that CI's verdict can be reproduced, and at random locally, so that they
# keep finding new cases. Loaded here, before any test module builds its own settings on top (a
# test's own settings may change max_examples, not derandomize, the seed or the database). Both
# derive from Hypothesis's "default" profile, not from whichever it loaded on seeing CI set.
settings.register_profile(
    "ci",
    settings.get_profile("default"),
    derandomize=True,  # implies no example database
    max_examples=100,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev", settings.get_profile("default"), derandomize=False, max_examples=100, deadline=None, print_blob=True
)


def hypothesis_profile(environ: Mapping[str, str]) -> str:
    """HYPOTHESIS_PROFILE when it names one, else "ci" when CI is set (not empty, "0" or "false"), else "dev"."""
    named = environ.get("HYPOTHESIS_PROFILE", "").strip()
    if named:
        return named
    return "ci" if environ.get("CI", "").strip().lower() not in ("", "0", "false") else "dev"


settings.load_profile(hypothesis_profile(os.environ))

FAST_COMPLETION = {
    "URONODE_SCP__COMPLETION_GRACE_S": "0.5",
    "URONODE_SCP__COMPLETION_QUIET_S": "20",
    "URONODE_INFERENCE__WORKERS": "0",  # no model unless a test asks for it (WITH_WORKER)
    "URONODE_DICOMWEB__AUTH": "none",  # tests/dicomweb/test_auth.py covers authentication
}
WITH_WORKER = {"URONODE_INFERENCE__WORKERS": "1"}


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Start real ``uronode serve`` processes; every one is stopped at the end of the test."""
    started: list[Node] = []

    def start(data_dir: Path | None = None, **env: str) -> Node:
        node = Node(
            data_dir or tmp_path / f"node{len(started)}",
            free_port(),
            free_port(),
            extra_env={**FAST_COMPLETION, **env},
        )
        started.append(node)
        return node.start()

    yield start
    for node in started:
        node.stop()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Redis]:
    """A real redis-server of the test's own (the broker of remote workers), stopped at the end."""
    started = Redis(tmp_path / "redis").start()
    try:
        yield started
    finally:
        started.stop()


def query(data_dir: Path, sql: str, *params: object) -> list[sqlite3.Row]:
    """Read the node's index as an outsider would (a separate connection)."""
    conn = sqlite3.connect(data_dir / "index.sqlite3", timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    from playwright.sync_api import sync_playwright

    from tests.browser.conftest import CHROMIUM_FLAGS, SCREENSHOTS
    from tests.peers.processes import require

    executable = require("chromium")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=executable,
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport={"width": 1400, "height": 900},
        )
        yield context
        context.close()
