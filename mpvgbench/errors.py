"""Every error type of the package, the one one-line formatter, and the one pydantic formatter.

A :class:`MpvgbenchError` is bad input that the user can fix (a spec, a dataset root, a database
URL, a run directory, a job's configuration): the CLI prints its message as one line and exits 2;
the worker records it in error.json with kind ``user``. Anything else that escapes a command is
a bug in mpvgbench (or in a library under it): the CLI lets its traceback show and exits 1. The
subclasses also derive from ``ValueError`` so that pydantic validators, which turn ``ValueError``
into validation errors, accept them as they are.

Two outcomes of a job are neither bad input nor bugs: :class:`NonFiniteError` (the training
diverged; error.json kind ``nonfinite``) and :class:`InfraError` (the job could not start or lost
its peers; kind ``infra``, retried).
"""

from __future__ import annotations

import types
import typing
from typing import Any, Optional, Union

from pydantic import BaseModel, ValidationError

__all__ = [
    "ConfigError", "DataError", "FieldError", "InfraError", "MethodError", "MpvgbenchError",
    "NonFiniteError", "NonFiniteLossError", "RunDirError", "SlurmError", "SpecError", "StoreError",
    "UnknownNameError", "first_validation_error", "one_line", "short_repr",
]


class MpvgbenchError(Exception):
    """Bad input the user can fix; the message is one line that names the problem and the fix."""


class SpecError(MpvgbenchError, ValueError):
    """A spec problem, as one line: file, field path, bad value, allowed values."""


class MethodError(MpvgbenchError, ValueError):
    """A position-embedding method that cannot exist (contradictory or unknown knobs)."""


class UnknownNameError(MpvgbenchError, ValueError):
    """An unknown model, dataset or preset name; the message lists the known ones."""


class DataError(MpvgbenchError, ValueError):
    """A dataset cannot be built: missing root, wrong layout, wrong class count."""


class StoreError(MpvgbenchError, ValueError):
    """The results database cannot be used as asked (unreachable, damaged, newer schema)."""


class RunDirError(MpvgbenchError, ValueError):
    """A run directory or one of its files is missing, unreadable or damaged."""


class SlurmError(MpvgbenchError, ValueError):
    """No Slurm here, sbatch rejected the job, the controller is down."""


class ConfigError(MpvgbenchError, ValueError):
    """A job's configuration cannot run as given (batch size vs processes or dataset, a switch
    value, a device this machine lacks)."""


class NonFiniteError(RuntimeError):
    """Training diverged: a loss, the weights or the validation loss became NaN/inf.
    ``epoch`` and ``step`` are 1-based (``step`` None: after the epoch's last step)."""

    def __init__(self, message: str, epoch: int, step: Optional[int]) -> None:
        super().__init__(message)
        self.epoch, self.step = epoch, step


class NonFiniteLossError(NonFiniteError):
    """The training loss became NaN/inf at ``epoch``/``step``."""

    def __init__(self, epoch: int, step: int, loss: float) -> None:
        super().__init__(
            f"non-finite training loss ({loss}) at epoch {epoch} step {step}; lower the lr, "
            "set recipe.grad_clip, or check the data", epoch, step,
        )
        self.loss = loss


class InfraError(RuntimeError):
    """The job could not start or talk to its peers (process group, environment)."""


def one_line(exc: BaseException, *, with_type: bool = False, limit: int = 300) -> str:
    """``exc`` as one line: its message with whitespace collapsed (a SQLAlchemy error's driver
    message, ``exc.orig``, rather than the statement dump), cut to ``limit`` characters;
    ``with_type`` puts the exception's class name in front (for bugs, where the type matters)."""
    inner = getattr(exc, "orig", None) or exc
    text = " ".join(str(inner).split())
    if with_type:
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    text = text or type(inner).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class FieldError(ValueError):
    """Raised inside a validator when the problem belongs to a field path pydantic cannot know."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, never built in full for big containers.

    A spec can hold a value whose full repr is gigabytes (nested YAML aliases), so containers
    are summarised by type and length instead of being rendered.
    """
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        text = f"a {type(value).__name__} of {len(value)} item(s)"
    elif isinstance(value, (str, bytes)) and len(value) > limit:
        text = repr(value[:limit])
    else:
        text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_loc(loc: tuple[Any, ...]) -> str:
    """pydantic's error location as a field path: ``models[2]``, ``slurm.time``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]":
            continue
        elif isinstance(part, str) and (
            part.startswith(("function-", "lax-", "str", "json-or-python"))
            or part in ("run_key", "run_cell", "dict[str,any]", "constrained-str")
        ):
            continue  # pydantic's names for union members / wrappers, not fields
        else:
            out += f".{part}" if out else str(part)
    return out


def _unwrap(annotation: Any) -> Any:
    """Strip ``Annotated`` and ``Optional``; a union of models yields its first model."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            models = [a for a in map(_unwrap, args) if isinstance(a, type) and issubclass(a, BaseModel)]
            annotation = models[0] if models else args[0]
        else:
            return annotation


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> Optional[type[BaseModel]]:
    """The pydantic model that holds the field at ``loc`` (for listing its allowed keys)."""
    current: Any = root
    for part in loc:
        current = _unwrap(current)
        origin = typing.get_origin(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            if part in current.model_fields:
                current = current.model_fields[part].annotation
            # else: one of pydantic's wrapper names (union tags): stay on this model
        elif origin in (list, tuple, set, frozenset):
            current = typing.get_args(current)[0]
        elif origin is dict:
            current = typing.get_args(current)[1]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def first_validation_error(exc: ValidationError, prefix: str = "",
                           model: Optional[type[BaseModel]] = None) -> str:
    """The first pydantic error as ``field.path[i]: message; got value``, on one line.

    ``model`` (the validated class) lets an unknown key be reported with the allowed ones.
    """
    err = exc.errors(include_url=False)[0]
    loc = ".".join(p for p in (prefix, format_loc(err["loc"])) if p)
    msg = str(err["msg"])
    kind = err["type"]
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, FieldError):  # model-level checks carry their own field path
            loc = ".".join(p for p in (loc, cause.field) if p)
    elif kind == "missing":
        msg = "missing; this field is required"
    elif kind == "extra_forbidden":
        parent = err["loc"][:-1]
        loc = ".".join(p for p in (prefix, format_loc(parent)) if p)
        msg = f"unknown key {err['loc'][-1]!r}"
        holder = _model_at(model, parent) if model is not None else None
        if holder is not None:
            msg += f"; allowed: {', '.join(holder.model_fields)}"
    else:
        msg = f"{msg[:1].lower()}{msg[1:]}; got {short_repr(err.get('input'))}"
    return " ".join(f"{loc or '(top level)'}: {msg}".split())
