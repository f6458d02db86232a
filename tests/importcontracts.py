"""An import-linter contract type of our own: no import cycle anywhere in the project's packages.

import-linter's own contracts see a cycle only between siblings (``acyclic_siblings``) or across
layers; a package whose ``__init__`` re-exports a module that imports the package back (``writers``
-> ``writers.results`` -> ``writers.seg`` -> ``writers``), or two modules in one layer importing
each other, passes them. This contract takes the whole graph of the root packages, as grimp builds
it (imports inside functions and under ``TYPE_CHECKING`` included, so a function-level import
cannot hide a cycle), and fails on every strongly connected set of modules, printing one cycle of
each with the lines that make it.

``pyproject.toml`` registers it (``[tool.importlinter] contract_types``); ``lint-imports``, run by
``./run test`` from the repository's root, imports it from there.
"""

from __future__ import annotations

from grimp import ImportGraph
from importlinter.application import output
from importlinter.domain.contract import Contract, ContractCheck
from rich.markup import escape


def import_cycles(graph: ImportGraph) -> list[list[str]]:
    """One shortest cycle (a list of modules, each importing the next, the last the first) for
    each set of modules that import one another, round or direct, in sorted order."""
    cycles = []
    for component in strongly_connected(graph):
        if len(component) < 2:
            continue
        members = set(component)
        start = min(members)
        best: list[str] | None = None
        for imported in sorted(graph.find_modules_directly_imported_by(start) & members):
            back = graph.find_shortest_chain(importer=imported, imported=start)
            if back is not None and (best is None or len(back) < len(best) + 1):
                best = [start, *back[:-1]]
        assert best is not None, component
        cycles.append(best)
    return sorted(cycles)


def strongly_connected(graph: ImportGraph) -> list[list[str]]:
    """Tarjan's strongly connected components of the import graph, iteratively (no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            module, imports = work[-1]
            for imported in imports:
                if imported not in index:
                    index[imported] = low[imported] = len(index)
                    stack.append(imported)
                    on_stack.add(imported)
                    work.append((imported, iter(sorted(graph.find_modules_directly_imported_by(imported)))))
                    break
                if imported in on_stack:
                    low[module] = min(low[module], index[imported])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[module])
                if low[module] == index[module]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == module:
                            break
                    components.append(sorted(component))
    return components


class AcyclicContract(Contract):
    """No module imports, directly or round about, a module that imports it (no options)."""

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        cycles = import_cycles(graph)
        details = []
        for cycle in cycles:
            steps = []
            for importer, imported in zip(cycle, [*cycle[1:], cycle[0]], strict=True):
                lines = graph.get_import_details(importer=importer, imported=imported)
                where = f" (l.{lines[0]['line_number']}: {lines[0]['line_contents']})" if lines else ""
                steps.append(f"{importer} -> {imported}{where}")
            details.append(steps)
        return ContractCheck(kept=not cycles, metadata={"cycles": details})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for steps in check.metadata["cycles"]:
            output.print_error("An import cycle:")
            for step in steps:
                output.indent_cursor()
                output.print_error(escape(step), bold=False)
            output.new_line()
