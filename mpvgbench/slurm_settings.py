"""The `slurm:` section of a spec: validated resources and their mapping to submitit's parameters.

A spec holds it as its nested `slurm:` model (``Spec.slurm``); it imports neither submitit nor
the executors, so a spec validates on any machine and the mapping is unit-testable without a
cluster. :mod:`mpvgbench.executors.slurm` consumes it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

from pydantic import (BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, ValidationInfo,
                      field_validator, model_validator)

from mpvgbench.errors import SlurmError, first_validation_error

# sbatch options that submitit sets itself or that a SlurmSettings field already covers: putting
# them in additional_parameters would silently fight with those (or break log paths / requeue).
_RESERVED = {
    "time": "time", "t": "time", "partition": "partition", "p": "partition", "nodes": "nodes",
    "N": "nodes", "ntasks_per_node": "tasks_per_node", "cpus_per_task": "cpus_per_task",
    "c": "cpus_per_task", "gpus_per_node": "gpus_per_node", "mem": "mem", "account": "account",
    "A": "account", "qos": "qos", "constraint": "constraint", "C": "constraint",
    "job_name": "name", "J": "name", "output": None, "o": None, "error": None, "e": None,
    "array": None, "signal": "signal_delay_s", "open_mode": None, "wckey": None,
    "gres": "gres", "gpus_per_task": "gpus_per_task", "mem_per_gpu": "mem_per_gpu",
    "exclusive": "exclusive", "reservation": "reservation", "nodelist": "nodelist", "w": "nodelist",
    "exclude": "exclude", "x": "exclude",
    # init_from's afterok is the executor's: a user dependency would replace it silently
    "dependency": None, "d": None,
}

STARTUP_MINUTES = 2.0  # a start: imports, data, the checkpoint read back
MIN_USEFUL_MINUTES = 3.0  # below this, `run` warns that requeues may make no progress
MAX_DERIVED_REQUEUES = 100

_TIME_RE = re.compile(
    r"^(?:(?P<days>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?$"
)
_MEM_RE = re.compile(r"^(?P<n>\d+)(?P<unit>[KMGT]?)B?$", re.IGNORECASE)


def parse_time_minutes(value: Union[int, str]) -> int:
    """Slurm's --time forms -> whole minutes (rounded up): 90, "90", "MM:SS", "HH:MM:SS",
    "D-HH", "D-HH:MM", "D-HH:MM:SS"."""
    if isinstance(value, bool):
        raise ValueError(f"time must be minutes or 'HH:MM:SS', got {value!r}")
    if isinstance(value, int):
        minutes = value
    else:
        m = _TIME_RE.match(value.strip())
        if m is None:
            raise ValueError(f"time {value!r} is not minutes, 'HH:MM:SS' or 'D-HH:MM:SS'")
        a, b, c = (int(x) if x is not None else None for x in m.group("a", "b", "c"))
        days = int(m.group("days") or 0)
        assert a is not None
        if m.group("days") is not None:  # D-HH[:MM[:SS]]
            seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
        elif c is not None:  # HH:MM:SS
            seconds = a * 3600 + (b or 0) * 60 + c
        elif b is not None:  # MM:SS
            seconds = a * 60 + b
        else:  # MM
            seconds = a * 60
        minutes = math.ceil(seconds / 60)
    if minutes < 1:
        raise ValueError(f"time must be at least 1 minute, got {value!r}")
    return minutes


# Run before the job's Python starts (sbatch script, before srun): torch/OpenMP/MKL threads = the
# CPUs Slurm gave each task (1 unless cpus_per_task is set). Without it every task starts one
# thread per core of the node: measured 2.42 s vs 0.08 s for a matmul loop, and seeds whose
# accuracy depends on the thread count. The worker's own thread rule, where present, reads the
# same SLURM_CPUS_PER_TASK and agrees.
THREAD_SETUP: tuple[str, ...] = (
    'export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"',
    'export MKL_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"',
)


class SlurmSettings(BaseModel):
    """Resources of one job (array task) on Slurm; every field is optional."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partition: Optional[str] = None
    time: Union[StrictInt, StrictStr] = 60  # minutes, "HH:MM:SS" or "D-HH:MM:SS"
    nodes: int = Field(default=1, ge=1)
    gpus_per_node: int = Field(default=0, ge=0)
    tasks_per_node: int = Field(default=1, ge=1)  # > 1: one process per task, DDP over them
    cpus_per_task: Optional[int] = Field(default=None, ge=1)
    mem: Optional[str] = None  # per node, e.g. "8G", "500M"
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    gres: Optional[str] = None  # e.g. "gpu:a100:2"; clusters that predate --gpus-per-node need it
    gpus_per_task: Optional[int] = Field(default=None, ge=1)
    mem_per_gpu: Optional[str] = None  # e.g. "40G"; excludes `mem` (Slurm refuses both)
    exclusive: bool = False  # the whole node(s), shared with no other job
    reservation: Optional[str] = None
    nodelist: Optional[str] = None  # run only on these nodes, e.g. "gpu[01-04]"
    exclude: Optional[str] = None  # never on these nodes, e.g. "gpu07,gpu12"
    array_parallelism: int = Field(default=256, ge=1)  # tasks of one array running at once
    # time-limit requeues per job (preemptions are not counted); unset: requeues_for(epochs)
    max_requeues: int = Field(default=3, ge=0)
    # your estimate of one epoch's minutes on this allocation: sizes max_requeues when it is unset
    epoch_minutes: Optional[float] = Field(default=None, gt=0, allow_inf_nan=False)
    # USR2 this long before the time limit -> checkpoint + requeue. Unset: 90 s, but at most a
    # quarter of the time limit (a 1-minute job would otherwise be signalled as it starts)
    signal_delay_s: int = Field(default=90, ge=1)
    setup: tuple[str, ...] = ()  # shell lines run before the job (module load ..., source ...)
    additional_parameters: dict[str, Union[str, int, float, bool]] = Field(default_factory=dict)
    folder: Optional[str] = None  # submitit's folder (logs, pickles); default <runs_root>/_slurm
    job_name: Optional[str] = Field(default=None, pattern=r"^[A-Za-z0-9_.+-]{1,128}$")  # None: the spec's name

    @field_validator("time")
    @classmethod
    def _check_time(cls, value: Union[int, str]) -> Union[int, str]:
        parse_time_minutes(value)
        return value

    @field_validator("mem", "mem_per_gpu")
    @classmethod
    def _check_mem(cls, value: Optional[str], info: ValidationInfo) -> Optional[str]:
        if value is None:
            return None
        m = _MEM_RE.match(str(value).strip())
        if m is None:
            raise ValueError(f"{info.field_name} {value!r} is not like '8G', '500M' or '16000' (MB)")
        return f"{m.group('n')}{m.group('unit').upper()}"

    @model_validator(mode="after")
    def _one_memory_form(self) -> SlurmSettings:
        if self.mem is not None and self.mem_per_gpu is not None:
            raise ValueError("mem and mem_per_gpu exclude each other (sbatch refuses both); keep one")
        return self

    @field_validator("additional_parameters")
    @classmethod
    def _check_additional(cls, value: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for raw_key, item in value.items():
            key = raw_key.lstrip("-").replace("-", "_")
            if key in _RESERVED:
                field = _RESERVED[key]
                fix = f"use the slurm key `{field}`" if field else "mpvgbench sets it itself"
                raise ValueError(f"{raw_key!r} is not allowed here: {fix}")
            out[key] = item
        return out

    @property
    def timeout_min(self) -> int:
        return parse_time_minutes(self.time)

    @property
    def effective_signal_delay_s(self) -> int:
        if "signal_delay_s" in self.model_fields_set:
            return self.signal_delay_s
        return max(10, min(self.signal_delay_s, self.timeout_min * 60 // 4))

    def useful_minutes(self) -> float:
        """Minutes one allocation can train: the limit less the start-up and the signal lead
        (Slurm sends --signal up to 60 s earlier than asked)."""
        return self.timeout_min - STARTUP_MINUTES - (self.effective_signal_delay_s + 60) / 60

    def requeues_for(self, epochs: int) -> int:
        """``max_requeues`` when set; else enough allocations for ``epochs`` at ``epoch_minutes``
        each (plus one spare), never fewer than the default 3."""
        if "max_requeues" in self.model_fields_set or self.epoch_minutes is None:
            return self.max_requeues
        useful = max(self.useful_minutes(), 0.5)
        return min(MAX_DERIVED_REQUEUES, max(self.max_requeues, math.ceil(epochs * self.epoch_minutes / useful)))

    @classmethod
    def parse(cls, data: Optional[Mapping[str, Any]]) -> SlurmSettings:
        """Validate a `slurm:` mapping outside a spec; any problem is a one-line SlurmError."""
        try:
            return cls.model_validate(dict(data or {}))
        except ValidationError as exc:
            raise SlurmError(first_validation_error(exc, prefix="slurm", model=cls)) from None

    def merged(self, override: Optional[SlurmSettings]) -> SlurmSettings:
        """These settings with the keys ``override`` sets explicitly replaced (a model's or a
        dataset's `slurm:` section over the spec's)."""
        if override is None or not override.model_fields_set:
            return self
        merged = self.model_dump(exclude_unset=True)
        merged.update(override.model_dump(include=override.model_fields_set))
        return SlurmSettings.model_validate(merged)  # validated again: mem + mem_per_gpu etc.

    def submitit_parameters(self, default_job_name: str = "mpvgbench") -> dict[str, Any]:
        """Keyword arguments for ``submitit.AutoExecutor.update_parameters``."""
        params: dict[str, Any] = {
            "name": self.job_name or default_job_name,
            "timeout_min": self.timeout_min,
            "nodes": self.nodes,
            "tasks_per_node": self.tasks_per_node,
            "slurm_signal_delay_s": self.effective_signal_delay_s,
            "slurm_array_parallelism": self.array_parallelism,
        }
        optional = {
            "cpus_per_task": self.cpus_per_task,
            "gpus_per_node": self.gpus_per_node or None,  # never "--gpus-per-node=0"
            "slurm_partition": self.partition,
            "slurm_mem": self.mem,
            "slurm_account": self.account,
            "slurm_qos": self.qos,
            "slurm_constraint": self.constraint,
            "slurm_gres": self.gres,
            "slurm_gpus_per_task": self.gpus_per_task,
            "slurm_mem_per_gpu": self.mem_per_gpu,
            "slurm_exclusive": True if self.exclusive else None,
            "slurm_nodelist": self.nodelist,
            "slurm_exclude": self.exclude,
            "slurm_setup": [*THREAD_SETUP, *self.setup],
            "slurm_additional_parameters": (
                {**self.additional_parameters, **({"reservation": self.reservation} if self.reservation else {})}
                or None),
        }
        params.update({k: v for k, v in optional.items() if v is not None})
        return params

    def resources_key(self) -> str:
        """Jobs with equal keys can share one job array."""
        return self.model_dump_json()

    def base_folder(self, runs_root: Path) -> Path:
        if self.folder is None:
            return runs_root / "_slurm"
        return Path(self.folder).expanduser()
