"""The live view of a local run: the job list and the running jobs' epoch, loss and accuracy.

On a terminal it is a rich ``Live`` table redrawn twice a second; elsewhere (CI logs, pipes,
CliRunner) it prints one line per state change, and for every running job one progress line
(epoch, loss, score, ETA) at most every ``PROGRESS_LINE_INTERVAL_S``, so logs stay readable.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from mpvgbench.cli.tables import fit_numbers, model_name, narrow_table, short_keys

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


# Off a terminal: the least time between two progress lines of one job (tests shorten it)
PROGRESS_LINE_INTERVAL_S = 60.0

# (metrics.jsonl field, label in the top-1 column): classification, then Tables 3 and 4
SCORES = (("top1", ""), ("ap_box", "AP"), ("miou", "mIoU"))


@dataclass
class JobLine:
    job: Job
    status: str = "queued"
    epoch: str = ""
    loss: str = ""
    top1: str = ""  # a dense job's primary metric, e.g. "mIoU 37.12" (score_name "miou")
    score_name: str = "top1"
    note: str = ""
    started: float | None = None  # time.monotonic() when its worker started
    ended: float | None = None
    fraction: float = 0.0  # of the run's total steps, from progress.json
    last_line: float | None = None  # time.monotonic() of its last progress line (off a terminal)

    def elapsed(self, now: float) -> float | None:
        return None if self.started is None else (self.ended or now) - self.started

    def eta(self, now: float) -> float | None:
        """Seconds left at the pace so far (None before the first progress report)."""
        elapsed = self.elapsed(now)
        if self.status != "running" or elapsed is None or self.fraction <= 0:
            return None
        return elapsed * (1 - self.fraction) / self.fraction


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


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
        self._started = time.monotonic()

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
            if not self.interactive:
                self._progress_line(line)
            return
        line.status = {"started": "running"}.get(event, event)
        if event == "started":
            line.started, line.ended = time.monotonic(), None
            line.last_line = line.started  # its first progress line comes an interval later
        elif event in ("finished", "failed", "cancelled"):
            line.ended = time.monotonic()
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
            acc = f" {line.score_name}={line.top1.split()[-1]}" if event == "finished" and line.top1 else ""
            self.console.print(f"[{line.status}] {job.key} {_cell(job)}{acc}{note}", markup=False,
                               highlight=False, soft_wrap=True)

    def _progress_line(self, line: JobLine) -> None:
        """``[running] KEY CELL epoch 2/100 loss 3.1234 top1 41.20 ETA 1:02:03``, at most every
        PROGRESS_LINE_INTERVAL_S per job: a log shows a long run moving without a line per step."""
        now = time.monotonic()
        if line.status != "running" or not line.epoch or (
                line.last_line is not None and now - line.last_line < PROGRESS_LINE_INTERVAL_S):
            return
        line.last_line = now
        parts = [f"epoch {line.epoch}"]
        if line.loss:
            parts.append(f"loss {line.loss}")
        if line.top1:
            parts.append(f"{line.score_name} {line.top1.split()[-1]}")
        eta = line.eta(now)
        if eta is not None:
            parts.append(f"ETA {format_duration(eta)}")
        self.console.print(f"[running] {line.job.key} {_cell(line.job)} {' '.join(parts)}", markup=False,
                           highlight=False, soft_wrap=True)

    def _update_progress(self, line: JobLine, run_dir: Path) -> None:
        progress = _read_json(run_dir / "progress.json")
        total = line.job.config.recipe.total_epochs
        if progress:
            try:
                epoch, step = int(progress.get("epoch", 0)), int(progress.get("step", 0))
                steps = int(progress.get("steps_per_epoch") or 0)
                total = int(progress.get("epochs") or total)  # dense jobs count evaluations
            except (TypeError, ValueError):
                return  # a damaged progress file only costs the live view its numbers
            line.epoch = f"{epoch}/{total}"
            if steps:
                line.fraction = min(1.0, (epoch + step / steps) / max(total, 1))
            if progress.get("loss") is not None:
                line.loss = f"{float(progress['loss']):.4f}"
        metrics = _last_metrics(run_dir) or {}
        for name, label in SCORES:
            if metrics.get(name) is not None:
                value = f"{float(metrics[name]):.2f}"
                line.top1, line.score_name = (f"{label} {value}" if label else value), name
                break

    def matrix_eta(self, now: float) -> float | None:
        """Seconds until the matrix is done: the mean job time so far, over the jobs still to
        run, spread over the jobs that run at once."""
        lines = list(self.lines.values())
        durations = [l.elapsed(now) or 0.0 for l in lines if l.status == "finished"]
        projected = [(l.elapsed(now) or 0.0) / l.fraction for l in lines if l.status == "running" and l.fraction > 0]
        per_job = (sum(durations) + sum(projected)) / len(durations + projected) if durations + projected else None
        running = [l for l in lines if l.status == "running"]
        queued = sum(l.status == "queued" for l in lines)
        if per_job is None or not running:
            return None
        left_running = sum(l.eta(now) or per_job for l in running)
        return (left_running + queued * per_job) / len(running)

    def render(self) -> Table:
        now = time.monotonic()
        counts: dict[str, int] = {}
        for line in self.lines.values():
            counts[line.status] = counts.get(line.status, 0) + 1
        title = "  ".join(f"{status}: {n}" for status, n in sorted(counts.items()))
        title += f"  elapsed {format_duration(now - self._started)}"
        eta = self.matrix_eta(now)
        if eta is not None:
            title += f"  ETA {format_duration(eta)}"
        shown = sorted(self.lines.values(), key=lambda l: ("running", "failed", "retry").count(l.status) == 0)
        keys = short_keys(self.lines)
        rows = []
        for line in shown[:40]:  # a terminal holds no more; the counts in the title cover the rest
            job = line.job
            rows.append({
                "key": keys[job.key], "model": model_name(job.model), "method": job.method_label,
                "dataset": job.dataset, "seed": str(job.seed), "status": line.status, "epoch": line.epoch,
                "loss": line.loss, "top-1": line.top1, "ETA": format_duration(line.eta(now)),
            })
        # What every job shares goes to the title, so the table fits 80 columns.
        shared = [c for c in ("model", "method", "dataset", "seed") if len({r[c] for r in rows}) == 1]
        if rows and shared:
            title += "  (" + " ".join(f"{c}={escape(rows[0][c])}" for c in shared) + ")"
        columns = [c for c in rows[0] if c not in shared] if rows else ["key", "status"]
        table = narrow_table(columns, title=title, right=("seed", "epoch", "loss", "top-1", "ETA"))
        fit_numbers(table, [[r[c] for c in columns] for r in rows])
        for r in rows:
            status = r["status"]
            table.add_row(*(f"[{STATUS_STYLE.get(status, '')}]{status}[/]" if c == "status" else escape(r[c])
                            for c in columns))
        return table


def _cell(job: Job) -> str:
    return f"{job.model} {job.method_label} {job.dataset} seed={job.seed}"
