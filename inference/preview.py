"""PNG-ready previews: the CT in a window where stones show, stones red, each framed green.

``render_slice`` is also what a Secondary Capture writer can burn in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inference.postprocess import Findings
from inference.volume import Volume

WINDOW = (150.0, 900.0)
"""Centre and width: soft tissue stays readable, stones stay distinct from bone."""
RED = (255, 0, 0)
GREEN = (0, 255, 0)


def render_slice(volume: Volume, findings: Findings, k: int, *, window: tuple[float, float] = WINDOW,
                 alpha: float = 0.75) -> np.ndarray:
    """uint8 RGB (rows, columns, 3) of slice k: stones painted red, boxes drawn green."""
    centre, width = window
    grey = np.clip((volume.hu[k] - (centre - width / 2)) / width * 255.0, 0, 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    stone = findings.mask[k] > 0
    rgb[stone] = (1 - alpha) * rgb[stone] + alpha * np.asarray(RED, np.float32)
    out = rgb.astype(np.uint8)
    for box in findings.boxes:
        if box.slice_index != k:
            continue
        out[box.row_min, box.column_min:box.column_max + 1] = GREEN
        out[box.row_max, box.column_min:box.column_max + 1] = GREEN
        out[box.row_min:box.row_max + 1, box.column_min] = GREEN
        out[box.row_min:box.row_max + 1, box.column_max] = GREEN
    return out


def write_previews(volume: Volume, findings: Findings, out_dir: Path) -> list[Path]:
    """One PNG per slice with a stone, named by the number a reader finds its CT image by, as the findings' table
    names it (``Volume.numbers``: ``image0031.png`` for InstanceNumber 31, ``frame0005.png``, or ``slice0012.png``
    counted from the feet end where the series' numbers do not tell its images apart); returns the paths."""
    import cv2

    numbers, kind = volume.numbers()
    word = {"instance": "image", "frame": "frame"}.get(kind, "slice")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in findings.slices_with_stones:
        path = out_dir / f"{word}{numbers[k]:04d}.png"
        cv2.imwrite(str(path), render_slice(volume, findings, k)[..., ::-1])
        paths.append(path)
    return paths
