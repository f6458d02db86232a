"""Benchmark of the inference pipeline on a 300-slice 512 x 512 CT series.

Measures, in one run on this machine: model load time; the whole pipeline from
DICOM files on disk to measured stones (read + HU, candidates, network,
postprocessing) as seconds and slices/s; peak memory (max RSS); the network's
achieved FLOP/s against the CPU's peak; and, as peers in the same run, the
Keras ``predict`` path against the ``tf.function`` path, and a full-resolution
4-level base-16 U-Net on whole 512 x 512 slices (the design the cascade
replaces), timed on a few slices and scaled to 300.

Noisy series (issue 10, item 4): the same phantom with noise added before it is
written (white, or white filtered in-plane by a Gaussian of 1 pixel: the grain
of a smooth reconstruction kernel), each run through the whole pipeline like
the clean one, reported with its candidate patches, peak memory (reset before
each variant) and its time as a ratio to the clean series of the same run.

The candidate rule without its noise bounds (as before issue 10) is the noisy
series' peer: its candidate patches are counted on every variant (untimed), and
the whole pipeline under it is timed once on the variants ``--unbounded`` names
(none by default: white 12 HU makes about 16,000 patches, minutes and 8 GB).

Usage: python -m bench.inference [--model default] [--slices 300] [--repeat 3] [--cores N]
                       [--noise clean,white12,...] [--unbounded white12,...] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, NotRequired, TypedDict

import numpy as np

if TYPE_CHECKING:  # TensorFlow and the model are imported when the benchmark runs, not on import
    from inference.candidates import CandidateRule
    from inference.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PEAK_GFLOPS = 232.0
"""Measured peak of this machine's 2 cores (float32 FMA), from the issue."""

NOISE = {  # name: (SD in HU, in-plane Gaussian filter SD in pixels; 0 = white)
    "clean": (0.0, 0.0),
    "white12": (12.0, 0.0),
    "white40": (40.0, 0.0),
    "correlated12": (12.0, 1.0),
    "correlated25": (25.0, 1.0),
    "correlated40": (40.0, 1.0),
}


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak_rss() -> bool:
    """Start the peak (max RSS) afresh (Linux >= 4.0); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class Measured(TypedDict):
    """One series through the whole pipeline: its runs and what the candidate rule saw."""

    runs: list[dict[str, float]]
    """Each run's seconds by stage (``Pipeline.last_timings``), its patches and stones."""
    median_total_s: float
    peak_rss_mb: float | None
    """None where the peak could not be reset before this series."""
    patches: int
    components: int
    noise_sd_hu: float | None
    fine_noise_sd_hu: float | None
    dense_threshold_hu: float
    smoothed_threshold_hu: float
    contrast_rule: bool
    over_budget: int
    patches_without_bounds: int
    ratio_to_clean: NotRequired[float]


def add_noise(hu: np.ndarray, sd: float, filter_px: float, seed: int) -> np.ndarray:
    """``hu`` plus noise of SD ``sd`` (white, or filtered in-plane), rounded and clipped."""
    from scipy import ndimage

    noise = np.random.default_rng(seed).standard_normal(hu.shape, dtype=np.float32)
    if filter_px:
        noise = ndimage.gaussian_filter(noise, (0, filter_px, filter_px))
    noise *= sd / float(noise.std())
    return np.clip(np.round(hu + noise), -1024, 3071).astype(np.float32)


def write_series(seed: int, slices: int, variants: list[str], out: Path, pixel_mm: float | None = None) -> None:
    """The benchmark phantom as one DICOM series per noise variant, ``out/<variant>/`` (``pixel_mm``: its
    pixel spacing, drawn by the generator when None)."""
    from lab.synth import generate_phantom, write_series

    phantom = generate_phantom(seed, slices=slices, slice_spacing=0.8, coverage=(0.0, 1.0), n_stones=4,
                               pixel_spacing=pixel_mm)
    for name in variants:
        sd, filter_px = NOISE[name]
        hu = add_noise(phantom.hu, sd, filter_px, seed) if sd else phantom.hu
        write_series(replace(phantom, hu=hu), out / name)


def without_bounds(rule: CandidateRule) -> CandidateRule:
    """The candidate rule as it was before its noise bounds."""
    return replace(rule, dense_noise_k=0.0, contrast_max_noise_hu=0.0, contrast_max_fine_noise_hu=0.0,
                   denoise_mm=0.0, max_patches=0, max_contrast_patches=0)


def measure_variant(pipeline: Pipeline, paths: list[Path], repeat: int) -> Measured:
    """The whole pipeline ``repeat`` times on one series; its runs, median and candidates."""
    from inference.candidates import find_candidates
    from inference.volume import load_volume

    runs: list[dict[str, float]] = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        volume = load_volume(paths)
        t1 = time.perf_counter()
        findings = pipeline.run(volume)
        t2 = time.perf_counter()
        runs.append({"read_s": t1 - t0, "total_s": t2 - t0, **pipeline.last_timings,
                     "stones": len(findings.stones)})
        del findings
        if len(runs) < repeat:
            del volume
    peak = max_rss_mb()
    found = find_candidates(volume, pipeline.rule)  # again, untimed: what the rule saw
    noise = found.noise
    unbounded = find_candidates(volume, without_bounds(pipeline.rule)).centres.shape[0]
    del volume
    return {
        "runs": [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in runs],
        "median_total_s": round(statistics.median(r["total_s"] for r in runs), 3),
        "peak_rss_mb": round(peak, 1),
        "patches": int(runs[0]["patches"]),
        "components": found.count,
        "noise_sd_hu": noise.sd_hu if noise else None,
        "fine_noise_sd_hu": noise.fine_sd_hu if noise else None,
        "dense_threshold_hu": round(found.dense_threshold_hu, 1),
        "smoothed_threshold_hu": round(found.smoothed_threshold_hu, 1),
        "contrast_rule": found.contrast_applied,
        "over_budget": found.over_budget,
        "patches_without_bounds": int(unbounded),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cores", type=int, default=None)
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--full-res-slices", type=int, default=4, help="slices for the full-resolution U-Net peer")
    parser.add_argument("--noise", default=",".join(NOISE),
                        help=f"noise variants, comma-separated, from {', '.join(NOISE)} (clean always runs)")
    parser.add_argument("--unbounded", default="",
                        help="variants to time once more with the candidate rule's noise bounds off ('' for none)")
    parser.add_argument("--pixel-mm", type=float, default=None,
                        help="the series' pixel spacing (default: the generator's draw for the seed); a "
                             "model that resamples to another analyses a resampled copy")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--write-series", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    variants = ["clean"] + [v for v in args.noise.split(",") if v and v != "clean"]
    variants += [v for v in args.unbounded.split(",") if v and v not in variants]
    unbounded = [v for v in args.unbounded.split(",") if v]
    unknown = [v for v in variants + unbounded if v not in NOISE]
    if unknown:
        parser.error(f"unknown noise variant(s): {', '.join(unknown)}")
    if args.write_series:
        write_series(args.seed, args.slices, variants, args.write_series, args.pixel_mm)
        return 0

    from inference.network import build_unet, flops_per_patch
    from inference.runtime import configure_threads, load_model

    cores = configure_threads(args.cores)
    result: dict[str, object] = {"cores": cores, "slices": args.slices, "peak_gflops": PEAK_GFLOPS,
                                 "pixel_mm": args.pixel_mm}
    rss_before = max_rss_mb()
    with tempfile.TemporaryDirectory(prefix="uronode-bench-") as tmp:
        # written by a child process, so that the generator's memory is not counted here
        subprocess.run([sys.executable, "-m", "bench.inference", "--write-series", tmp,
                        "--seed", str(args.seed), "--slices", str(args.slices), "--noise", ",".join(variants)]
                       + (["--pixel-mm", str(args.pixel_mm)] if args.pixel_mm else []),
                       check=True, cwd=ROOT)
        series = {name: sorted((Path(tmp) / name).glob("*.dcm")) for name in variants}
        t = time.perf_counter()
        loaded = load_model(args.model)
        result["model"] = f"{loaded.card.name} {loaded.card.version} ({loaded.format})"
        result["model_load_s"] = round(time.perf_counter() - t, 3)

        from inference.pipeline import Pipeline

        pipeline = Pipeline(loaded)
        flops_patch = flops_per_patch(loaded.keras_model)
        noisy: dict[str, Measured] = {}
        for name in variants:
            reset = reset_peak_rss()
            measured = measure_variant(pipeline, series[name], args.repeat)
            if not reset and name != "clean":
                measured["peak_rss_mb"] = None  # the process's peak so far: not this series'
            noisy[name] = measured
        clean = noisy.pop("clean")
        runs = clean["runs"]
        best = min(runs, key=lambda r: r["total_s"])
        median_total = clean["median_total_s"]
        network_flops = best["patches"] * flops_patch
        result["pipeline"] = {
            "runs": runs,
            "median_total_s": round(median_total, 3),
            "slices_per_s": round(args.slices / median_total, 1),
            "network_gflop": round(network_flops / 1e9, 2),
            "network_gflops_achieved": round(network_flops / best["network_s"] / 1e9, 1) if best["network_s"] else None,
            "candidates": {k: v for k, v in clean.items() if k not in ("runs", "median_total_s")},
        }
        result["peak_rss_mb"] = clean["peak_rss_mb"]
        result["rss_before_mb"] = round(rss_before, 1)
        for measured in noisy.values():
            measured["ratio_to_clean"] = round(measured["median_total_s"] / median_total, 2)
        result["noisy_series"] = noisy

        # the peer: the same series under the rule without its noise bounds, once
        bounded_rule = pipeline.rule
        pipeline.rule = without_bounds(bounded_rule)
        peers: dict[str, Measured] = {}
        for name in unbounded:
            reset = reset_peak_rss()
            measured = measure_variant(pipeline, series[name], 1)
            if not reset:
                measured["peak_rss_mb"] = None
            measured["ratio_to_clean"] = round(measured["median_total_s"] / median_total, 2)
            peers[name] = measured
        pipeline.rule = bounded_rule
        result["unbounded_peer"] = peers

    # the network alone on a full batch: the best FLOP/s it reaches, two runtimes
    import tensorflow as tf

    x = np.random.default_rng(0).standard_normal((256, *loaded.keras_model.input_shape[1:])).astype(np.float32)
    forward = pipeline._forward
    forward(x[:64])
    t = time.perf_counter()
    for i in range(0, 256, 64):
        tf.nest.map_structure(lambda out: out.numpy(), forward(x[i:i + 64]))
    dt_fn = time.perf_counter() - t
    loaded.keras_model.predict(x[:64], batch_size=64, verbose=0)
    t = time.perf_counter()
    loaded.keras_model.predict(x, batch_size=64, verbose=0)
    dt_predict = time.perf_counter() - t
    result["network_batch_256"] = {
        "tf_function_s": round(dt_fn, 3),
        "tf_function_gflops": round(256 * flops_patch / dt_fn / 1e9, 1),
        "tf_function_fraction_of_peak": round(256 * flops_patch / dt_fn / 1e9 / PEAK_GFLOPS, 3),
        "keras_predict_s": round(dt_predict, 3),
        "keras_predict_gflops": round(256 * flops_patch / dt_predict / 1e9, 1),
    }

    # peer: a full-resolution 4-level base-16 U-Net on whole slices
    full = build_unet(base=16, levels=4, channels=1, patch=512)
    full_fn = tf.function(lambda v: full(v, training=False))
    xs = np.random.default_rng(1).standard_normal((1, 512, 512, 1)).astype(np.float32)
    full_fn(xs)
    t = time.perf_counter()
    for _ in range(args.full_res_slices):
        full_fn(xs).numpy()
    per_slice = (time.perf_counter() - t) / args.full_res_slices
    result["full_resolution_unet_peer"] = {
        "gflop_per_slice": round(flops_per_patch(full) / 1e9, 2),
        "s_per_slice": round(per_slice, 3),
        "gflops": round(flops_per_patch(full) / per_slice / 1e9, 1),
        "estimated_s_for_series": round(per_slice * args.slices, 1),
        "cascade_speedup": round(per_slice * args.slices / median_total, 1),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
