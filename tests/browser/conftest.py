"""Headless Chromium (Debian's) driven by Playwright; no browser download. Pixel helpers for the viewer's tests."""

from __future__ import annotations

import io
import json
import os
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
DOC_SCREENSHOTS = ROOT / "docs" / "viewer"
"""With UPDATE_VIEWER_DOCS=1 the viewer's tests also write their screenshots here, small, for docs/viewer.md."""
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
    "--ignore-gpu-blocklist",
    # two names on the loopback, for pages reached as on a hospital network: plain HTTP, not localhost
    # (test_cross_site.py)
    "--host-resolver-rules=MAP node.test 127.0.0.1, MAP evil.test 127.0.0.1",
]


def rgb(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def red_mask(px: np.ndarray) -> np.ndarray:
    """The SEG's red: strongly red, little green or blue."""
    return (px[..., 0] > 150) & (px[..., 1] < 90) & (px[..., 2] < 90)


def red_pixels(png: bytes) -> int:
    return int(red_mask(rgb(png)).sum())


def green_pixels(png: bytes) -> int:
    px = rgb(png)
    return int(((px[..., 1] > 150) & (px[..., 0] < 90) & (px[..., 2] < 90)).sum())


def grey_mask(px: np.ndarray, floor: int = 40) -> np.ndarray:
    """Grey image pixels (the CT): every channel above ``floor``, the channels within 12 of each other."""
    return (px.min(-1) > floor) & (px.max(-1) - px.min(-1) < 12)


def save_shot(png: bytes, name: str, width: int = 700) -> None:
    """Keep a screenshot in test-artifacts; with UPDATE_VIEWER_DOCS=1 also a small copy in docs/viewer/."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS / f"{name}.png").write_bytes(png)
    if os.environ.get("UPDATE_VIEWER_DOCS") == "1":
        DOC_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        image = Image.open(io.BytesIO(png)).convert("RGB")
        if image.width > width:
            image = image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS)
        image.quantize(colors=64, method=Image.Quantize.FASTOCTREE).save(DOC_SCREENSHOTS / f"{name}.png", optimize=True)


def dicomweb_json(http_port: int, path: str) -> list[dict]:
    """A QIDO-RS or WADO-RS metadata answer of the node, as DICOM JSON."""
    request = urllib.request.Request(f"http://127.0.0.1:{http_port}/dicom-web/{path}",
                                     headers={"Accept": "application/dicom+json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())
