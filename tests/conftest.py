"""Shared test setup: one thread per test process (tests run in parallel under pytest-xdist)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_worker_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that asked a CheckpointableJob for a checkpoint marks its process as requeued;
    the next test in the same xdist process must not inherit that (its failures would vanish)."""
    import mpvgbench.worker

    monkeypatch.setattr(mpvgbench.worker, "_REQUEUED", False)
