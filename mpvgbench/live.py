"""The live view of a local run: the job list and the running jobs' epoch, loss and accuracy.

On a terminal it is a rich ``Live`` table redrawn twice a second; elsewhere (CI logs, pipes,
CliRunner) it prints one line per state change so logs stay readable.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

if TYPE_CHECKING:
    from mpvgbench.matrix import Job

STATUS_STYLE = {
    "queued": "dim",
    "running": "cyan",
    "finished": "green",
    "failed": "bold red",
    "skipped": "yellow",
    "retry": "magenta",
    "cancelled": "yellow",
}


@dataclass
class JobLine:
    job: Job
    status: str = "queued"
    epoch: str = ""
    loss: str = ""
    top1: str = ""
    note: str = ""


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # not written yet, or being replaced right now


def _last_metrics(run_dir: Path) -> dict[str, Any] | None:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None


class LiveView:
    """Receives executor events (``LocalExecutor(on_event=view.handle)``) and shows them."""

    def __init__(self, jobs: Sequence[Job], console: Console | None = None) -> None:
        self.console = console or Console(stderr=False)
        self.lines = {job.key: JobLine(job) for job in jobs}
        self.interactive = self.console.is_terminal
        self._live: Live | None = None

    def __enter__(self) -> LiveView:
        if self.interactive:
            self._live = Live(get_renderable=self.render, console=self.console, refresh_per_second=2)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def handle(self, event: str, job: Job, info: dict[str, Any]) -> None:
        line = self.lines.setdefault(job.key, JobLine(job))
        if event == "progress":
            self._update_progress(line, Path(info["run_dir"]))
            return
        line.status = {"started": "running"}.get(event, event)
        full_note = ""
        if event == "failed":
            full_note = str(info.get("error", ""))
            line.note = full_note[:80]
        elif event == "skipped":
            line.note = str(info.get("reason", ""))
        elif event == "finished":
            self._update_progress(line, Path(info["run_dir"]))
        if not self.interactive:  # one line per event, never wrapped: logs stay greppable
            note = f" {full_note or line.note}" if full_note or line.note else ""
            acc = f" top1={line.top1}" if event == "finished" and line.top1 else ""
            self.console.print(f"[{line.status}] {job.key} {_cell(job)}{acc}{note}", markup=False,
                               highlight=False, soft_wrap=True)

    def _update_progress(self, line: JobLine, run_dir: Path) -> None:
        progress = _read_json(run_dir / "progress.json")
        if progress:
            steps = progress.get("steps_per_epoch")
            step = f" {progress.get('step', 0)}/{steps}" if steps else ""
            line.epoch = f"{progress.get('epoch', 0)}{step}"
            if progress.get("loss") is not None:
                line.loss = f"{float(progress['loss']):.4f}"
        metrics = _last_metrics(run_dir)
        if metrics and metrics.get("top1") is not None:
            line.top1 = f"{float(metrics['top1']):.2f}"

    def render(self) -> Table:
        counts: dict[str, int] = {}
        for line in self.lines.values():
            counts[line.status] = counts.get(line.status, 0) + 1
        title = "  ".join(f"{status}: {n}" for status, n in sorted(counts.items()))
        table = Table(title=title, expand=False)
        for column in ("key", "model", "method", "dataset", "seed", "status", "epoch", "loss", "top-1", "note"):
            table.add_column(column, no_wrap=column != "note")
        shown = sorted(self.lines.values(), key=lambda l: ("running", "failed", "retry").count(l.status) == 0)
        for line in shown[:40]:  # a terminal holds no more; the counts in the title cover the rest
            job = line.job
            table.add_row(
                job.key, job.model, job.method_label, job.dataset, str(job.seed),
                f"[{STATUS_STYLE.get(line.status, '')}]{line.status}[/]",
                line.epoch, line.loss, line.top1, line.note,
            )
        return table


def _cell(job: Job) -> str:
    return f"{job.model} {job.method_label} {job.dataset} seed={job.seed}"
