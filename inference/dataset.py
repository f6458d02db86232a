"""Training patches from generated phantoms, cut by the same candidate stage as inference."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference.candidates import DEFAULT_RULE, CandidateRule, cut_patches, find_candidates
from inference.network import CONTEXT, PATCH
from inference.synth import Phantom, generate_phantom

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class PatchSet:
    patches: np.ndarray
    """float16 HU (n, PATCH, PATCH, 2 * CONTEXT + 1)."""
    targets: np.ndarray
    """uint8 (n, PATCH, PATCH): stone pixels of the centre slice."""
    has_stone: np.ndarray
    """bool (n,)."""
    seeds: np.ndarray
    """int (n,): the phantom each patch came from."""

    def save(self, path: Path) -> None:
        np.savez(path, patches=self.patches, targets=self.targets, has_stone=self.has_stone, seeds=self.seeds)

    @classmethod
    def load(cls, path: Path) -> PatchSet:
        data = np.load(path)
        return cls(data["patches"], data["targets"], data["has_stone"], data["seeds"])

    @classmethod
    def concatenate(cls, parts: list[PatchSet]) -> PatchSet:
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("patches", "targets", "has_stone", "seeds")))


def patches_from_phantom(phantom: Phantom, rule: CandidateRule = DEFAULT_RULE) -> PatchSet:
    volume = phantom.to_volume()
    found = find_candidates(volume, rule)
    centres = found.centres
    patches = cut_patches(volume.hu, centres, PATCH, CONTEXT)
    targets = cut_patches((phantom.stone_labels > 0).astype(np.float32), centres, PATCH, 0)[..., 0] > 0
    # cut_patches fills outside with -1000, which is not > 0: fine for a mask
    has = np.asarray(targets.reshape(len(centres), PATCH * PATCH).any(axis=1))
    return PatchSet(patches.astype(np.float16), targets.astype(np.uint8), has, np.full(len(centres), phantom.seed))


def build_patch_set(seeds: list[int], **phantom_kwargs: object) -> PatchSet:
    from tqdm import tqdm

    parts = []
    for seed in tqdm(seeds, desc="phantoms", unit="phantom"):
        parts.append(patches_from_phantom(generate_phantom(seed, **phantom_kwargs)))  # type: ignore[arg-type]
    return PatchSet.concatenate(parts)
