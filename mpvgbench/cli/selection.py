"""Which stored runs a spec names: the same matrix ``run`` makes from the same arguments.

``report SPEC [--set ...] [--only ...] [--smoke]`` (and, later, ``status``) select runs by job
key, never by the spec's name: a renamed copy of a spec, or one with ``--set recipe.epochs=1``,
selects exactly the runs its own ``run`` trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mpvgbench.spec import Spec


def matrix_selection(spec: "Spec", *, smoke: bool = False, only: Sequence[str] = ()) -> dict[str, str]:
    """``{job key: the dataset of its cell}`` for the cells of ``spec`` that ``run --only``
    would run (the runs they start from are left out: they are not cells). The dataset is the
    spec's, also for a smoke job that trains on generated data in its place, so Table 2's smoke
    fine-tunes report as CIFAR-100 and their ImageNet parents not at all."""
    from mpvgbench.matrix import _Builder, check_cells, expand, select

    chosen = {job.key for job in select(expand(spec, smoke=smoke), only) if not job.parent_only}
    # the matrix's own builder, cell by cell: the one place that knows a job's cell
    builder = _Builder(spec, smoke)
    out: dict[str, str] = {}
    for cell in check_cells(spec):
        key = builder.job(cell).key
        if key in chosen:
            out.setdefault(key, cell.dataset)
    return out
