"""The layers hold and the import contracts catch what breaks them.

``./run test`` runs ``lint-imports`` on the checkout; these tests make sure that run means
something: every core module is inside the contract, and on a copy of the packages the contracts
fail when an upward import, an import between two services or a cycle hidden in a function is
added (and pass on the copy as it is).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("uronode", "scp", "dicomweb", "inference", "lab")
APP = {"uronode.__main__", "uronode.app"}


def contracts() -> dict[str, dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in config["contracts"]}


def test_every_module_of_uronode_outside_the_app_is_in_the_core_layer() -> None:
    """A layers contract checks only the modules it names: a new core module must be named too."""
    layers = contracts()["layers"]["layers"]
    assert isinstance(layers, list)
    assert layers[:4] == ["uronode.__main__", "uronode.app", "lab", "scp | dicomweb | inference"]
    core = {name.strip() for name in layers[4].split(":")}
    on_disk = {f"uronode.{p.stem}" for p in (ROOT / "uronode").glob("*.py") if p.stem != "__init__"}
    on_disk |= {f"uronode.{p.parent.name}" for p in (ROOT / "uronode").glob("*/__init__.py")}
    assert core == on_disk - APP, "name every module of uronode/ outside the app in the core layer"


def test_the_package_root_imports_nothing() -> None:
    """``uronode/__init__.py`` is in no layer (it holds the others), so it must not import at all."""
    tree = ast.parse((ROOT / "uronode" / "__init__.py").read_text())
    assert not [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packages, the contracts and our contract type, copied where the tests may break them."""
    root = tmp_path_factory.mktemp("layers")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__", "static"))
    (root / "tests").mkdir()
    for name in ("__init__.py", "importcontracts.py"):
        shutil.copy(ROOT / "tests" / name, root / "tests" / name)
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` in ``root``: it finds the packages and our contract type there, first on its path."""
    command = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(command), "--no-cache", "--no-logo"], cwd=root, capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"})


def broken_with(root: Path, module: str, lines: str) -> str:
    """The output of ``lint-imports`` with ``lines`` added at the end of ``module``, which is restored after."""
    path = root / Path(*module.split(".")).with_suffix(".py")
    original = path.read_text()
    path.write_text(original + "\n\n" + lines + "\n")
    try:
        done = lint_imports(root)
    finally:
        path.write_text(original)
    assert done.returncode == 1, done.stdout + done.stderr
    return done.stdout


def test_the_contracts_hold_on_the_packages_as_they_are(copy: Path) -> None:
    done = lint_imports(copy)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 kept, 0 broken" in done.stdout


def test_an_upward_import_breaks_the_layers(copy: Path) -> None:
    out = broken_with(copy, "uronode.jobs", "def _upward() -> None:\n    from dicomweb import app  # noqa: F401")
    assert "Layers, one way down: app > lab > services > core BROKEN" in out
    assert "uronode.jobs is not allowed to import dicomweb" in out
    assert "uronode.jobs -> dicomweb.app" in out


def test_the_core_importing_the_app_breaks_the_layers(copy: Path) -> None:
    out = broken_with(copy, "uronode.settings", "import uronode.app.node  # noqa: E402, F401")
    assert "uronode.settings is not allowed to import uronode.app" in out


def test_one_service_importing_another_breaks_the_layers(copy: Path) -> None:
    out = broken_with(copy, "scp.sender", "from dicomweb.stow_client import stow  # noqa: E402, F401")
    assert "scp is not allowed to import dicomweb" in out
    # no cycle there: the layers contract alone catches it
    assert "No import cycle (package re-exports and imports inside functions included) KEPT" in out


def test_a_cycle_dodged_by_a_function_level_import_is_found(copy: Path) -> None:
    """Within one layer the layers contract allows any import; the cycle contract still sees this one."""
    out = broken_with(copy, "uronode.types", "def _dodge() -> None:\n    from uronode.store import Store  # noqa: F401")
    assert "Layers, one way down: app > lab > services > core KEPT" in out
    assert "An import cycle:" in out
    assert "uronode.types -> uronode.store (l." in out


def test_a_cycle_through_a_package_re_export_is_found(copy: Path) -> None:
    """``writers/__init__`` re-exports ``results``, which imports ``seg``: ``seg`` importing the
    package's names goes round in a circle."""
    out = broken_with(copy, "inference.writers.seg", "from inference.writers import Results  # noqa: E402, F401")
    assert "inference.writers.seg -> inference.writers (l." in out
    assert "inference.writers -> inference.writers.results" in out


def test_the_runtime_importing_the_lab_breaks_the_layers(copy: Path) -> None:
    """The runtime never imports the model lab, not even inside a function."""
    out = broken_with(copy, "inference.pipeline", "def _lab() -> None:\n    from lab.synth import generate_phantom  # noqa: F401")
    assert "Layers, one way down: app > lab > services > core BROKEN" in out
    assert "inference is not allowed to import lab" in out


def test_the_serving_path_importing_the_lab_breaks_a_contract(copy: Path) -> None:
    """The app may import the lab (its CLI registers the lab's commands), but not what ``uronode serve``
    runs, even through a module of the app that does."""
    out = broken_with(copy, "uronode.app.worker", "import uronode.app.cli  # noqa: E402, F401")
    assert "The node serves without the model lab BROKEN" in out
    assert "uronode.app.worker is not allowed to import lab" in out
    assert "uronode.app.worker -> uronode.app.cli" in out


def test_the_lab_importing_a_service_other_than_the_runtime_breaks_a_contract(copy: Path) -> None:
    out = broken_with(copy, "lab.train", "from scp.sender import store_files  # noqa: E402, F401")
    assert "The lab builds on the runtime alone BROKEN" in out
    assert "lab is not allowed to import scp" in out
    assert "lab.train -> scp.sender" in out


def test_building_the_cli_loads_no_lab_module_but_its_commands() -> None:
    """``uronode serve`` (and ``jobs``, ``config``, ...) parse their arguments with the parser that
    holds the lab's commands too: building it loads ``lab.cli`` alone, whose commands import the
    rest of the lab when they run."""
    code = ("import sys; from uronode.app import cli, node, worker; cli.build_parser(); "
            "print(sorted(m for m in sys.modules if m == 'lab' or m.startswith('lab.')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["['lab',", "'lab.cli']"]
