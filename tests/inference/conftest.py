"""Shared fixtures: small synthetic CT series with known geometry."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.synth import Phantom, generate_phantom, write_series


@pytest.fixture(scope="session")
def small_phantom() -> Phantom:
    """A 128 x 128 phantom of about 30 slices over the kidneys, with three kidney stones."""
    return generate_phantom(7, rows=128, slice_spacing=2.0, coverage=(0.66, 0.96), n_stones=3,
                            stone_sites=("kidney",))


@pytest.fixture(scope="session")
def small_series(small_phantom: Phantom, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_series(small_phantom, tmp_path_factory.mktemp("series"))
