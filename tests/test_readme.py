"""The README documents every setting with its default."""

import subprocess
from pathlib import Path

from pydantic import BaseModel

from uronode.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def leaves(model: type[BaseModel], prefix: str = "") -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names += leaves(annotation, f"{prefix}{name}.")
        else:
            names.append(prefix + name)
    return names


def test_every_setting_is_in_the_readme_with_its_environment_variable() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in leaves(Settings):
        assert f"| `{name}` |" in readme, name
        env = "URONODE_" + name.upper().replace(".", "__")
        assert f"`{env}`" in readme, env


def test_the_readme_layout_names_every_folder_of_the_repository() -> None:
    """Every top-level folder in git, and the app inside the core's package, has its row."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    folders = {path.split("/")[0] for path in tracked.splitlines() if "/" in path and not path.startswith(".")}
    assert {"uronode", "scp", "inference", "dicomweb", "models", "tests"} <= folders
    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    for folder in sorted(folders | {"uronode/app"}):
        assert f"| `{folder}/` |" in layout, folder


def test_the_readme_quick_start_has_exactly_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line.strip()]
    assert [c.split()[0:2] for c in commands] == [["./run", "serve"], ["./run", "test"]]
    assert "./run test" in (ROOT / ".ci" / "run").read_text()


def test_the_conformance_statement_lists_what_the_listener_accepts() -> None:
    from inference.writers import (
        KOS_SERIES_NUMBER,
        SC_SERIES_NUMBER,
        SEG_SERIES_NUMBER,
        SR_SERIES_NUMBER,
    )
    from scp.server import TRANSFER_SYNTAXES
    from scp.status import StoreStatus
    from uronode.dicomfile import IMPLEMENTATION_CLASS_UID

    text = (ROOT / "docs" / "conformance.md").read_text()
    for uid in TRANSFER_SYNTAXES:
        assert f"| {uid} |" in text, uid
    for status in StoreStatus:
        if status is not StoreStatus.PROCESSING_FAILURE:
            assert f"| {status.value:04X} |" in text, status
    for number in (SEG_SERIES_NUMBER, SC_SERIES_NUMBER, SR_SERIES_NUMBER, KOS_SERIES_NUMBER):
        assert f"| {number} |" in text
    assert IMPLEMENTATION_CLASS_UID in text
