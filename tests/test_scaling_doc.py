"""docs/scaling.md quotes every figure it builds on with the line it stands on; the quotes stay true."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = re.compile(r"`((?:[^`])+)`.*\| `([\w./-]+\.md):(\d+)` \|$")


def stale(text: str) -> list[str]:
    """Each row of the figures table, `| what | `figure` ... | `file.md:N` |`, whose figure is not on line N."""
    table = text.split("## The figures used", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| what")]
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
