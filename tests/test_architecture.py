"""The module graph: no import circles and no arrow back up the flow
spec -> matrix -> executor -> trainer -> run directory -> store -> report (docs/architecture.md).

Read from the source with ``ast`` (no import), so it also covers imports inside functions.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mpvgbench"

# stage -> modules (prefixes). Data flows down this list: a stage reads the types of the stages
# above it (the matrix reads a Spec, the report reads the store), never of a stage below it (the
# spec importing an executor to validate its section was such an arrow back up the flow).
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("spec", ("mpvgbench.spec", "mpvgbench.slurm_settings")),
    ("matrix", ("mpvgbench.matrix",)),
    ("executor", ("mpvgbench.executors",)),
    ("trainer", ("mpvgbench.worker", "mpvgbench.train", "mpvgbench.threads", "mpvgbench.data",
                 "mpvgbench.models", "mpvgbench.optim", "mpvgbench.analyze", "mpvgbench.downstream")),
    ("store", ("mpvgbench.store",)),
    ("report", ("mpvgbench.report", "mpvgbench.curves")),
]
# Shared vocabulary every stage may use: errors, methods, the config, the catalogs, and the run
# directory's format (rundir: the trainer writes it, the executor prepares it, the store reads it).
FOUNDATION = ("mpvgbench.errors", "mpvgbench.methods", "mpvgbench.config", "mpvgbench.catalog",
              "mpvgbench.recipes", "mpvgbench.paper", "mpvgbench.rundir")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mpvgbench"):
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def stage_of(module: str) -> int | None:
    for index, (_, prefixes) in enumerate(STAGES):
        if any(module == p or module.startswith(p + ".") or module.startswith(p + "_") for p in prefixes):
            return index
    return None


def test_no_import_circles() -> None:
    graph = import_graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    # a package importing its own submodules (cli/__init__ registering commands) is no circle
    cycles = [c for c in cycles if not any(a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(c, c[1:]))]
    assert not cycles, cycles


# The executor drives the stages after it: it launches the worker, claims in the store and
# prepares run directories. Those calls go down the flow by design.
DRIVES = {"executor": ("mpvgbench.worker", "mpvgbench.store", "mpvgbench.threads")}


def test_no_arrow_back_up_the_flow() -> None:
    backwards = []
    for module, targets in import_graph().items():
        here = stage_of(module)
        if here is None or module.startswith(FOUNDATION):
            continue
        for target in targets:
            there = stage_of(target)
            if there is None or there <= here or target.startswith(DRIVES.get(STAGES[here][0], ())):
                continue
            backwards.append(f"{module} ({STAGES[here][0]}) imports {target} ({STAGES[there][0]})")
    assert not backwards, backwards


def test_only_the_cli_wires_the_stages() -> None:
    """Library modules never import the command line."""
    offenders = [m for m, targets in import_graph().items() if not m.startswith("mpvgbench.cli")
                 and m != "mpvgbench.__main__" and any(t.startswith("mpvgbench.cli") for t in targets)]
    assert not offenders, offenders


# The one training loop and what it is made of; a task (classification, dense) plugs into it.
LOOP_CORE = ("mpvgbench.train.loop", "mpvgbench.train.task", "mpvgbench.train.checkpoint",
             "mpvgbench.train.bookkeeping", "mpvgbench.train.runtime", "mpvgbench.train")
TASKS = ("mpvgbench.train.classification", "mpvgbench.train.dense", "mpvgbench.downstream",
         "mpvgbench.data", "mpvgbench.models")


def test_the_loop_knows_no_task() -> None:
    """The loop never imports a task or what a task is built from (at import time: the package
    picks the task inside ``task_for``, as the worker asks it to)."""
    offenders = []
    for module in LOOP_CORE:
        path = PACKAGE.parent / (module.replace(".", "/") + ("/__init__.py" if module == "mpvgbench.train" else ".py"))
        tree = ast.parse(path.read_text())
        top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        lazy = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and n not in top_level]
        for node in top_level + (lazy if module != "mpvgbench.train" else []):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            offenders += [f"{module} imports {n}" for n in names if n and n.startswith(TASKS)]
    assert not offenders, offenders
