"""The deployment's documents stay true: docs/scaling.md quotes every figure it builds on with the line it
stands on, and every metric docs/operations.md and the README tell operators to watch is one the node exports."""

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from uronode.metrics import exposition
from uronode.store import Store

ROOT = Path(__file__).resolve().parent.parent
SOURCE = re.compile(r"`((?:[^`])+)`.*\| `([\w./-]+\.md):(\d+)` \|$")


def stale(text: str) -> list[str]:
    """Each row of the figures table, `| what | `figure` ... | `file.md:N` |`, whose figure is not on line N."""
    table = text.split("## The figures used", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]  # the first is the header
    problems = [] if len(rows) >= 10 else [f"only {len(rows)} figures"]
    for row in rows:
        match = SOURCE.search(row)
        if not match:
            problems.append(f"a figure without its source line: {row}")
            continue
        figure, source, number = match.group(1).replace("\\|", "|"), match.group(2), int(match.group(3))
        lines = (ROOT / source).read_text().splitlines()
        if number > len(lines) or figure not in lines[number - 1]:
            now = [i + 1 for i, line in enumerate(lines) if figure in line]
            problems.append(f"docs/scaling.md quotes {figure!r} from {source}:{number}; it is on line(s) {now or 'none'}")
    return problems


def test_every_figure_stands_on_the_line_it_cites() -> None:
    assert stale((ROOT / "docs" / "scaling.md").read_text()) == []


def test_a_figure_that_moved_or_changed_is_caught() -> None:
    text = (ROOT / "docs" / "scaling.md").read_text()
    moved = text.replace("`docs/benchmarks.md:35`", "`docs/benchmarks.md:36`")
    changed = text.replace("`7.33 s`", "`6.33 s`")
    unsourced = text.replace("| `docs/benchmarks.md:14` |", "| |")
    assert ["'327/s'" in p for p in stale(moved)] == [True]
    assert ["'6.33 s'" in p for p in stale(changed)] == [True]
    assert ["without its source line" in p for p in stale(unsourced)] == [True]


def exported(tmp_path: Path) -> set[str]:
    """Every metric family and sample name the node's /metrics has, on an empty store."""
    text = exposition(Store(tmp_path / "data").db).decode()
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        if family.type == "counter":  # a counter's samples are NAME_total, even where none is there yet
            names.add(family.name + "_total")
        names.update(sample.name for sample in family.samples)
    return names


def test_every_metric_the_documents_name_is_exported(tmp_path: Path) -> None:
    names = exported(tmp_path)
    for document in ("docs/operations.md", "README.md"):
        named = set(re.findall(r"`(uronode_[a-z_]+)", (ROOT / document).read_text()))
        assert named, document
        assert named <= names, f"{document} names {sorted(named - names)}, which /metrics does not have"
