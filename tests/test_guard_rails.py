"""The benchmarks are importable modules and the tests a package: nothing edits ``sys.path``.

The benchmarks (``python -m bench.<name>``) start their peers with ``tests.peers``; both are imported
as packages from the repository root, as pytest imports the tests (every folder of ``tests/`` has its
``__init__.py``, so no test folder is put on ``sys.path`` under its own name either).
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import bench

ROOT = Path(__file__).resolve().parents[1]


def benchmark_names() -> list[str]:
    return sorted(module.name for module in pkgutil.iter_modules(bench.__path__))


def test_every_benchmark_is_a_module_of_the_bench_package() -> None:
    assert benchmark_names() == ["dicomweb", "e2e", "inference", "ingest", "load", "scale"]
    scripts = [p.name for p in (ROOT / "bench").iterdir() if p.is_file() and p.suffix != ".py"]
    assert scripts == [], "a benchmark is a module, bench/<name>.py"


@pytest.mark.parametrize("name", benchmark_names())
def test_a_benchmark_imports_and_explains_itself(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Imported as a module, its ``main`` parses ``--help`` (before it starts any peer)."""
    module = importlib.import_module(f"bench.{name}")
    monkeypatch.setattr(sys, "argv", [f"bench.{name}", "--help"])
    with pytest.raises(SystemExit) as exited:
        module.main()
    assert exited.value.code == 0
    assert f"python -m bench.{name}" in capsys.readouterr().out


def python_files() -> list[Path]:
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / line for line in tracked.stdout.splitlines()]


def test_no_module_touches_sys_path() -> None:
    edits = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
                    and node.value.id == "sys"):
                edits.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert edits == []


def test_every_folder_of_the_tests_is_a_package() -> None:
    folders = {p.parent for p in (ROOT / "tests").rglob("*.py") if "__pycache__" not in p.parts}
    assert sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").is_file()) == []
