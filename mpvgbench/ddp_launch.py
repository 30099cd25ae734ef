"""``python -m mpvgbench.ddp_launch TORCHRUN_ARGS...``: torchrun, tied to the executor's life.

The local executor starts a DDP job as this launcher (not ``torch.distributed.run`` directly):
it applies the worker's rule (``worker.die_with_parent``: SIGKILL when the executor dies, exit
at once if it is already gone) to the torchrun agent itself, then names itself the parent its
worker processes check, and runs torchrun in this process. Started as plain torchrun, every
worker found the agent as its parent, not the executor whose pid it was given, and exited
("its executor is gone"); and the agent would outlive a killed executor.
"""

from __future__ import annotations

import os
import sys
from typing import Optional


def main(argv: Optional[list[str]] = None) -> None:
    from mpvgbench.worker import PARENT_PID_ENV, die_with_parent

    die_with_parent()  # the executor -> this agent
    os.environ[PARENT_PID_ENV] = str(os.getpid())  # this agent -> each worker
    from torch.distributed.run import main as torchrun

    torchrun(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
