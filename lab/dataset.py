"""Training patches, cut by the same candidate stage as inference, from phantoms or labelled series."""

from __future__ import annotations

import logging
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Unpack

import numpy as np
from scipy import ndimage

from inference.candidates import DEFAULT_RULE, CandidateRule, cut_patches, find_candidates
from inference.network import LEGACY_SPEC, InputSpec, cut_inputs
from inference.volume import Volume, find_dicom_files, group_series, load_volume
from lab.realimages import LabelledImage, exam_keys, image_volume, stone_mask
from lab.synth import (
    PLANES,
    Phantom,
    PhantomOptions,
    centre_planes,
    clear_plane,
    generate_phantom,
    plane_image,
)
from uronode.errors import UronodeError

logger = logging.getLogger(__name__)


class PatchSetError(UronodeError, ValueError):
    """A file is not a patch set :meth:`PatchSet.save` wrote (another file, a truncated one); names it."""


@dataclass(frozen=True, eq=False)
class PatchSet:
    patches: np.ndarray
    """float16 HU (n, patch, patch, spec.raw_channels), see ``inference.network.cut_inputs``."""
    targets: np.ndarray
    """uint8 (n, patch, patch): stone pixels of the centre slice."""
    has_stone: np.ndarray
    """bool (n,): any stone pixel in the patch."""
    seeds: np.ndarray
    """int (n,): the series (phantom seed, or case number) each patch came from."""
    centre_stone: np.ndarray | None = None
    """bool (n,): the candidate component at the centre holds stone on this slice (the component head's target)."""
    contrast: np.ndarray | None = None
    """bool (n,): the centre candidate is a local-contrast one."""
    windowed: np.ndarray | None = None
    """bool (n,): cut from an 8-bit windowed image read back as HU (clipped to the assumed window)."""

    FIELDS = ("patches", "targets", "has_stone", "seeds", "centre_stone", "contrast", "windowed")

    def __len__(self) -> int:
        return int(self.seeds.shape[0])

    def save(self, path: Path) -> None:
        np.savez(path, **{f: getattr(self, f) for f in self.FIELDS if getattr(self, f) is not None})

    @classmethod
    def load(cls, path: Path) -> PatchSet:
        """The patch set :meth:`save` wrote to ``path``; a :class:`PatchSetError` naming the file for any
        other file (an OSError for one that cannot be opened)."""
        unreadable = (ValueError, EOFError, zipfile.BadZipFile, zlib.error)
        what = "a saved patch set (the .npz file train --save-patches writes)"
        try:
            data = np.load(path)  # numpy's own words (pickled data, allow_pickle) would mislead here
        except unreadable:
            raise PatchSetError(f"{path} is not {what}") from None
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise PatchSetError(f"{path} is not {what}: it holds one array, not a set of them")
        with data:
            missing = [f for f in ("patches", "targets", "has_stone", "seeds") if f not in data.files]
            if missing:
                raise PatchSetError(f"{path} is not {what}: it lacks {', '.join(missing)}")

            def optional(name: str) -> np.ndarray | None:
                return data[name] if name in data.files else None

            try:
                return cls(data["patches"], data["targets"], data["has_stone"], data["seeds"],
                           optional("centre_stone"), optional("contrast"), optional("windowed"))
            except unreadable as exc:
                raise PatchSetError(f"{path} is a damaged patch set: {exc}") from None

    @classmethod
    def concatenate(cls, parts: list[PatchSet]) -> PatchSet:
        def cat(values: list[np.ndarray | None]) -> np.ndarray | None:
            present = [v for v in values if v is not None]
            return np.concatenate(present) if len(present) == len(values) else None

        return cls(np.concatenate([p.patches for p in parts]), np.concatenate([p.targets for p in parts]),
                   np.concatenate([p.has_stone for p in parts]), np.concatenate([p.seeds for p in parts]),
                   cat([p.centre_stone for p in parts]), cat([p.contrast for p in parts]),
                   cat([p.windowed for p in parts]))

    def with_windowed(self, value: bool) -> PatchSet:
        """The same patches, all marked windowed (or not)."""
        fields = {f: getattr(self, f) for f in self.FIELDS}
        fields["windowed"] = np.full(len(self), value)
        return PatchSet(**fields)

    def subset(self, index: np.ndarray) -> PatchSet:
        def pick(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else values[index]

        return PatchSet(self.patches[index], self.targets[index], self.has_stone[index], self.seeds[index],
                        pick(self.centre_stone), pick(self.contrast), pick(self.windowed))


def patches_from_labelled(volume: Volume, stone_mask: np.ndarray, seed: int, rule: CandidateRule = DEFAULT_RULE,
                          spec: InputSpec = LEGACY_SPEC, max_contrast_negatives: int | None = None,
                          rng: np.random.Generator | None = None) -> PatchSet:
    """Patches of one series whose stone voxels are ``stone_mask`` (bool, the volume's shape).

    Local-contrast candidates without stone are many (noise); ``max_contrast_negatives``
    keeps a random sample of them.
    """
    found = find_candidates(volume, rule)
    centres, owners = found.centres, found.component_of_centre
    stone = stone_mask.astype(bool)
    centre_stone = np.zeros(len(centres), dtype=bool)
    boxes = ndimage.find_objects(found.labels, max_label=found.count) if found.count else []
    for i, ((k, _r, _c), owner) in enumerate(zip(centres, owners, strict=True)):
        box = boxes[owner - 1]
        assert box is not None
        big = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in box[1:])
        near = ndimage.binary_dilation(found.labels[k][big] == owner)
        centre_stone[i] = bool((near & stone[k][big]).any())
    is_contrast = owners > found.dense_count if found.dense_count >= 0 else np.zeros(len(owners), bool)
    keep = np.ones(len(centres), dtype=bool)
    if max_contrast_negatives is not None:
        rng = rng or np.random.default_rng(seed)
        spare = np.nonzero(is_contrast & ~centre_stone)[0]
        if spare.size > max_contrast_negatives:
            keep[rng.choice(spare, spare.size - max_contrast_negatives, replace=False)] = False
    centres, centre_stone, is_contrast = centres[keep], centre_stone[keep], is_contrast[keep]
    patches = cut_inputs(volume.hu, centres, spec)
    targets = cut_patches(stone.astype(np.float32), centres, spec.patch, 0)[..., 0] > 0
    # cut_patches fills outside with -1000, which is not > 0: fine for a mask
    has = np.asarray(targets.any(axis=(1, 2)))
    return PatchSet(patches.astype(np.float16), targets.astype(np.uint8), has, np.full(len(centres), seed),
                    centre_stone, is_contrast)


def patches_from_phantom(phantom: Phantom, rule: CandidateRule = DEFAULT_RULE, spec: InputSpec = LEGACY_SPEC,
                         max_contrast_negatives: int | None = None) -> PatchSet:
    return patches_from_labelled(phantom.to_volume(), phantom.stone_labels > 0, phantom.seed, rule, spec,
                                 max_contrast_negatives)


def stone_planes(phantom: Phantom, free: int, rng: np.random.Generator) -> list[tuple[str, int]]:
    """(plane, index) of the coronal and sagittal planes through each stone's centre, and ``free`` of each
    plane drawn at random among the stone-free ones (``lab.synth.clear_plane``)."""
    chosen: list[tuple[str, int]] = []
    for plane, axis in PLANES.items():
        chosen += [(plane, i) for i in centre_planes(phantom, axis)]
        clear = [i for i in range(phantom.stone_labels.shape[axis]) if clear_plane(phantom, axis, i)]
        chosen += [(plane, int(i)) for i in rng.permutation(clear)[:free]]
    return list(dict.fromkeys(chosen))


def patches_from_planes(phantom: Phantom, rule: CandidateRule = DEFAULT_RULE, spec: InputSpec = LEGACY_SPEC,
                        max_contrast_negatives: int | None = None, free: int = 2) -> PatchSet:
    """Patches of a phantom's coronal and sagittal planes (``stone_planes``), each a lone image as an
    uploaded image of that plane is predicted (``lab.synth.plane_image``: head up, the slices' axis
    resampled to the pixel spacing). Every stone a plane cuts is stone there, through its centre or not."""
    rng = np.random.default_rng(phantom.seed + 7_919)
    planes = stone_planes(phantom, free, rng)
    if not planes:
        raise ValueError(f"phantom {phantom.seed} has no stone and no stone-free plane was asked for: no plane to cut")
    parts = []
    for plane, index in planes:
        hu, labels = plane_image(phantom, plane, index)
        volume = image_volume(hu, f"{phantom.seed}-{plane}-{index}", phantom.pixel_spacing)
        parts.append(patches_from_labelled(volume, (labels > 0)[None], phantom.seed, rule, spec,
                                           max_contrast_negatives, rng))
    return PatchSet.concatenate(parts)


def patches_from_images(images: Sequence[LabelledImage], rule: CandidateRule = DEFAULT_RULE,
                        spec: InputSpec = LEGACY_SPEC, max_contrast_negatives: int | None = 15,
                        first_seed: int = 10_000_000) -> PatchSet:
    """Patches of real windowed images with boxes (``lab.realimages``): each image a lone
    slice, its stone pixels from ``box_mask``. ``seeds`` numbers the images' examinations from
    ``first_seed`` (so a validation split by seed keeps examinations whole)."""
    from tqdm import tqdm

    keys = exam_keys(im.source for im in images)
    number = {k: first_seed + i for i, k in enumerate(sorted(set(keys.values())))}
    parts: list[PatchSet] = []
    for im in tqdm(images, desc="images", unit="image", disable=len(images) < 50):
        volume = image_volume(im.as_hu("assumed"), im.name, im.pixel_mm)
        seed = number[keys[im.source]]
        part = patches_from_labelled(volume, stone_mask(im)[None], seed, rule, spec, max_contrast_negatives,
                                     np.random.default_rng(seed + len(parts)))
        parts.append(part.with_windowed(im.hu is None))  # an image in HU is not re-windowed as a display image
    return PatchSet.concatenate(parts)


STONE_FREE_FIRST_SEED = 30_000_000
"""``seeds`` of the stone-free series' patches start here (apart from phantoms' and images' numbers)."""


def patches_from_stone_free(folders: Sequence[Path], rule: CandidateRule = DEFAULT_RULE,
                            spec: InputSpec = LEGACY_SPEC, max_contrast_negatives: int | None = 15,
                            first_seed: int = STONE_FREE_FIRST_SEED) -> PatchSet:
    """Negatives of real CT known to hold no stone: every DICOM series below ``folders``, cut as a series
    (each slice with its neighbours) and each of its slices as a lone image (the candidates a slice alone
    gives are not the series'), in HU (``windowed`` false: training re-windows and thins them as it does
    the generated series). Every patch is a negative for the stone mask and the component head.
    ``seeds`` numbers the series from ``first_seed``. Raises ValueError when no series is found."""
    series = group_series(find_dicom_files(list(folders)))
    if not series:
        raise ValueError(f"no DICOM series in {', '.join(map(str, folders))}")
    parts: list[PatchSet] = []
    for n, (_uid, paths) in enumerate(sorted(series.items())):
        seed = first_seed + n
        rng = np.random.default_rng(seed)
        volume = load_volume(paths)
        parts.append(patches_from_labelled(volume, np.zeros(volume.shape, bool), seed, rule, spec,
                                           max_contrast_negatives, rng))
        for path in dict.fromkeys(volume.source_paths):
            alone = load_volume([path])
            parts.append(patches_from_labelled(alone, np.zeros(alone.shape, bool), seed, rule, spec,
                                               max_contrast_negatives, rng))
    return PatchSet.concatenate(parts).with_windowed(False)


def build_patch_set(seeds: list[int], **phantom_kwargs: Unpack[PhantomOptions]) -> PatchSet:
    from tqdm import tqdm

    parts = []
    for seed in tqdm(seeds, desc="phantoms", unit="phantom"):
        parts.append(patches_from_phantom(generate_phantom(seed, **phantom_kwargs)))
    return PatchSet.concatenate(parts)
