"""The node installed from its wheel, as the Dockerfile installs it, finds its model and gets ready.

The wheel is built from what the Dockerfile copies into the image, without build isolation (the
tests run without a network; the ``test`` extra brings the setuptools that pyproject.toml asks
for). It is installed, not editable, into a fresh virtual environment. To avoid installing
TensorFlow a second time, that environment takes its dependencies from the project's own
environment: a ``.pth`` file names the project environment's ``site-packages``, and the wheel
goes in with ``pip install --no-deps``. A ``.pth`` line that is a path only adds that folder to
``sys.path`` (after the fresh environment's own ``site-packages``); the ``.pth`` files inside it
are not run, so the project's editable install (a finder that points at the checkout) stays
out: the node's packages come from the wheel, which the test checks before anything else.
Both commands then run from a folder outside the checkout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import httpx
import pytest
from setuptools import find_packages

from lab.synth import generate_phantom, write_series
from tests.peers.processes import Proc, free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]


def listed_packages() -> list[str]:
    return list(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])


def test_listed_packages_are_every_package_on_disk() -> None:
    """pyproject.toml lists the packages (to map models/ into the wheel): a new one must be listed too."""
    listed = set(listed_packages())
    assert "uronode.models" in listed
    code = listed - {"uronode.models"}
    tops = sorted({name.split(".")[0] for name in code})
    on_disk = set(find_packages(str(ROOT), include=[*tops, *(f"{top}.*" for top in tops)]))
    assert code == on_disk


def image_sources() -> list[str]:
    """What the Dockerfile copies from the repository into the image it builds the wheel in."""
    sources = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--") for w in words):
            sources += words[1:-1]
    assert "models" in sources and "pyproject.toml" in sources, sources
    return sources


def build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    source.mkdir()
    for name in image_sources():
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    dist = tmp_path / "dist"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist),
         str(source)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = dist.glob("uronode-*.whl")
    return wheel


def fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (site / "uronode-test-dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return venv


def clean_env() -> dict[str, str]:
    """The environment without anything that would point Python or the node elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("URONODE_", "PYTHON", "VIRTUAL_ENV"))}
    return {**env, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@pytest.mark.slow
def test_installed_wheel_predicts_and_serves(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {"uronode/models/default/card.json", "uronode/models/default/model.keras"} <= names
    venv = fresh_venv(tmp_path, wheel)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = clean_env()

    # The node's packages come from the installed wheel, not from the checkout.
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import json, dicomweb, inference, lab, scp, uronode;"
         "print(json.dumps([m.__file__ for m in (dicomweb, inference, lab, scp, uronode)]))"],
        capture_output=True, text=True, timeout=120, cwd=elsewhere, env=env,
    )
    assert done.returncode == 0, done.stderr
    for module_file in json.loads(done.stdout):
        assert Path(module_file).is_relative_to(venv), module_file

    done = subprocess.run([str(venv / "bin" / "uronode"), "config"], capture_output=True, text=True, timeout=120,
                          cwd=elsewhere, env=env)
    assert done.returncode == 0, done.stderr
    models_dir = Path(json.loads(done.stdout)["inference"]["models_dir"])
    assert models_dir.is_relative_to(venv) and (models_dir / "default" / "card.json").is_file()

    phantom = generate_phantom(7, rows=128, slice_spacing=2.5, slices=8, coverage=(0.72, 0.88), n_stones=1)
    write_series(phantom, elsewhere / "ct")
    done = subprocess.run(
        [str(venv / "bin" / "uronode"), "predict", "ct", "--out", "out", "--no-previews"],
        capture_output=True, text=True, timeout=600, cwd=elsewhere, env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((elsewhere / "out" / "findings.json").read_text())
    card = json.loads((models_dir / "default" / "card.json").read_text())
    assert report["model"] == {"name": card["name"], "version": card["version"]}
    assert len(report["series"]) == 1 and report["series"][0]["dicom"]

    # the model lab's commands come with the wheel too
    done = subprocess.run(
        [str(venv / "bin" / "uronode"), "synth", "--out", "synth", "--rows", "64", "--slices", "4"],
        capture_output=True, text=True, timeout=300, cwd=elsewhere, env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(list((elsewhere / "synth" / "series-00001").glob("*.dcm"))) == 4

    http_port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [str(venv / "bin" / "uronode"), "serve", "--host", "127.0.0.1", "--data-dir", "data",
             "--dicom-port", str(free_port()), "--http-port", str(http_port)],
            stdout=out, stderr=subprocess.STDOUT, cwd=elsewhere,
            env={**env, "URONODE_SCP__PROCESSES": "1", "URONODE_DICOMWEB__AUTH": "none"},
        )
    node = Proc(popen, log)
    answers: list[str] = []

    def ready() -> bool:
        if popen.poll() is not None:
            raise AssertionError(f"the node exited with {popen.returncode}:\n{node.log_text()}")
        try:
            response = httpx.get(f"http://127.0.0.1:{http_port}/readyz", timeout=5)
        except httpx.TransportError:
            return False
        answers.append(f"{response.status_code} {response.text}")
        return response.status_code == 200

    try:
        wait_until(ready, 180, "the installed node's /readyz to answer 200", interval=0.5)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; last answers: {answers[-3:]}\n{node.log_text()[-3000:]}") from None
    finally:
        node.stop(signal.SIGTERM)
    assert not re.search(r"model .* not found", node.log_text())
