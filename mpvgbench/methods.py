"""Position-embedding methods as data.

Every variant of the paper is described by five knobs (see ``docs/methods.md``):

``pool``            ``"token"`` (class token) or ``"avg"`` (GAP: Last LN per token, then mean).
``add_to_input``    ``x_0 = patches + pos_0`` before block 0 (Eq. 8).
``layerwise_from``  ``None`` (no layer-wise PE), ``0`` (every block, LaPE) or ``1`` (all but
                    block 0, PVG/MPVG).
``hierarchical``    ``pos_l = LN'_l(pos_{l-1})`` (True) or ``LN'_l(pos_0)`` (False).
``last_ln_pe``      ``None`` or ``k``: the Last LN's output gets ``+ LN''(pos_k)``; ``k = 0`` is MPVG.

A method is named by a preset (``"mpvg"``), a label (``"mpvg[last_ln_pe=5]"``, what
:func:`method_label` writes), a mapping of knobs with an optional ``base`` preset
(``{"base": "mpvg", "last_ln_pe": 5}``), or a :class:`PEMethod`. :func:`resolve_method` turns any
of them into a :class:`PEMethod` once, at the boundary (the spec, the timm entry points); from
there on the object itself travels: in ``TrainConfig.method``, into the model constructors, into
the store (``to_json``/``from_json``) and the report. Nothing downstream branches on a preset's
name. A PEMethod is canonical: equivalent knob settings compare and hash equal.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

from mpvgbench.errors import MethodError, UnknownNameError

Pool = Literal["token", "avg"]

KNOBS: tuple[str, ...] = ("pool", "add_to_input", "layerwise_from", "hierarchical", "last_ln_pe")


@dataclass(frozen=True)
class PEMethod:
    """The five knobs of a position-embedding method (``methods.md``)."""

    pool: Pool = "token"
    add_to_input: bool = True
    layerwise_from: int | None = None
    hierarchical: bool = True
    last_ln_pe: int | None = None

    def __post_init__(self) -> None:
        _check_knobs(self)
        if self.layerwise_from is None:  # meaningless without layer-wise PE: one canonical form
            object.__setattr__(self, "hierarchical", True)

    @property
    def has_class_token(self) -> bool:
        return self.pool == "token"

    def blocks_with_pe(self, depth: int) -> list[int]:
        """Indices of the blocks that receive an LN'-delivered PE."""
        if self.layerwise_from is None:
            return []
        return list(range(self.layerwise_from, depth))

    def validate_for_depth(self, depth: int) -> None:
        """Raise :class:`MethodError` when a knob points past a model of ``depth`` blocks."""
        if self.last_ln_pe is None:
            return
        allowed = sorted({0, *self.blocks_with_pe(depth)})
        if self.last_ln_pe not in allowed:
            raise MethodError(
                f"last_ln_pe={self.last_ln_pe} is not a PE of this {depth}-block model; "
                f"allowed: {allowed[0]}..{allowed[-1]}"
                + (f" (block {self.last_ln_pe} gets no LN'-PE)" if self.last_ln_pe < depth else "")
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> dict[str, Any]:
        """The stored form (config.json, the database): the five knobs."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PEMethod:
        """Inverse of :meth:`to_json`."""
        return cls(**{k: data[k] for k in KNOBS if k in data})

    @property
    def label(self) -> str:
        return _cached_label(self)


def _check_knobs(method: PEMethod) -> None:
    """One-line :class:`MethodError` for a knob value or a combination that cannot exist."""
    if method.pool not in ("token", "avg"):
        raise MethodError(f"pool must be 'token' or 'avg', got {method.pool!r}")
    for name in ("add_to_input", "hierarchical"):
        if not isinstance(getattr(method, name), bool):
            raise MethodError(f"{name} must be true or false, got {getattr(method, name)!r}")
    if method.layerwise_from not in (None, 0, 1) or isinstance(method.layerwise_from, bool):
        raise MethodError(
            f"layerwise_from must be null, 0 or 1, got {method.layerwise_from!r}"
        )
    if method.last_ln_pe is not None:
        if isinstance(method.last_ln_pe, bool) or not isinstance(method.last_ln_pe, int):
            raise MethodError(
                f"last_ln_pe must be null or a block index >= 0, got {method.last_ln_pe!r}"
            )
        if method.last_ln_pe < 0:
            raise MethodError(f"last_ln_pe must be >= 0, got {method.last_ln_pe}")
        if method.pool == "token":
            raise MethodError(
                "last_ln_pe needs pool='avg': with a class token the Last-LN PE term never "
                "reaches the head"
            )
        if method.last_ln_pe > 0 and method.layerwise_from is None:
            raise MethodError(
                f"last_ln_pe={method.last_ln_pe} names a layer-wise PE but layerwise_from is "
                "null; use last_ln_pe=0 or set layerwise_from to 0 or 1"
            )
    if method.layerwise_from is None and not method.add_to_input:
        raise MethodError(
            "add_to_input=false with layerwise_from=null leaves the model without any "
            "position information; set add_to_input=true or layerwise_from to 0 or 1"
        )


PRESETS: dict[str, PEMethod] = {
    "default": PEMethod(pool="token", add_to_input=True, layerwise_from=None),
    "gap": PEMethod(pool="avg", add_to_input=True, layerwise_from=None),
    "gap_lastln": PEMethod(pool="avg", add_to_input=True, layerwise_from=None, last_ln_pe=0),
    "lape": PEMethod(pool="token", add_to_input=False, layerwise_from=0, hierarchical=True),
    "lape_gap": PEMethod(pool="avg", add_to_input=False, layerwise_from=0, hierarchical=True),
    "pvg_cls": PEMethod(pool="token", add_to_input=True, layerwise_from=1, hierarchical=True),
    "pvg": PEMethod(pool="avg", add_to_input=True, layerwise_from=1, hierarchical=True),
    "mpvg": PEMethod(
        pool="avg", add_to_input=True, layerwise_from=1, hierarchical=True, last_ln_pe=0
    ),
}

MethodLike = Union[str, Mapping[str, Any], PEMethod]

_LABEL_RE = re.compile(r"^([a-z_]+)\[([a-z_]+=[A-Za-z0-9_]+(?:,[a-z_]+=[A-Za-z0-9_]+)*)\]$")
_LABEL_VALUES: dict[str, Any] = {"null": None, "true": True, "false": False}


def parse_method_label(label: str) -> Optional[dict[str, Any]]:
    """``"mpvg[last_ln_pe=5]"`` (a :func:`method_label`) -> ``{"base": "mpvg", "last_ln_pe": 5}``.

    ``None`` when ``label`` is not of that form (a preset name, say).
    """
    match = _LABEL_RE.match(label)
    if match is None:
        return None
    knobs: dict[str, Any] = {"base": match.group(1)}
    for item in match.group(2).split(","):
        name, text = item.split("=", 1)
        knobs[name] = _LABEL_VALUES.get(text, int(text) if text.isdigit() else text)
    return knobs


def resolve_method(value: MethodLike) -> PEMethod:
    """A preset name, a label, a knob mapping (optionally with ``base``) or a PEMethod -> PEMethod."""
    if isinstance(value, PEMethod):
        return value
    if isinstance(value, str):
        if value in PRESETS:
            return PRESETS[value]
        knobs = parse_method_label(value) if "[" in value else None
        if knobs is None:
            raise UnknownNameError(
                f"unknown method {value!r}; presets: {', '.join(PRESETS)} "
                f"(or a mapping of knobs: {', '.join(KNOBS)})"
            )
        value = knobs
    if isinstance(value, Mapping):
        knobs = dict(value)
        base_name = knobs.pop("base", None)
        unknown = sorted(set(knobs) - set(KNOBS), key=str)
        if unknown:
            raise MethodError(
                f"unknown method knob(s) {', '.join(map(repr, unknown))}; "
                f"allowed: base, {', '.join(KNOBS)}"
            )
        if base_name is not None and not isinstance(base_name, str):
            raise MethodError(f"method base must be a preset name, got {type(base_name).__name__}")
        base = resolve_method(base_name) if base_name is not None else PEMethod()
        return dataclasses.replace(base, **knobs)
    raise MethodError(
        f"a method must be a preset name or a mapping of knobs, got {type(value).__name__}"
    )


def method_label(value: MethodLike) -> str:
    """A short, stable, human-readable name: the preset's name or ``base[knob=value,...]``."""
    knobs = resolve_method(value).to_dict()
    best_name, best_diff = "default", None
    for name, preset in PRESETS.items():
        preset_knobs = preset.to_dict()
        diff = {k: v for k, v in knobs.items() if preset_knobs[k] != v}
        if best_diff is None or len(diff) <= len(best_diff):  # ties: the later, richer preset
            best_name, best_diff = name, diff
        if not diff:
            return name
    assert best_diff is not None
    inner = ",".join(f"{k}={_fmt(v)}" for k, v in best_diff.items())
    return f"{best_name}[{inner}]"


@functools.lru_cache(maxsize=4096)
def _cached_label(method: PEMethod) -> str:
    return method_label(method)


def _fmt(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def canonical_method_dict(value: MethodLike) -> dict[str, Any]:
    """Knobs in canonical form (equivalent methods give equal dicts)."""
    return resolve_method(value).to_dict()
