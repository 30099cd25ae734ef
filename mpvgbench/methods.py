"""Position-embedding methods as data.

Every variant of the paper is described by five knobs (see ``docs/methods.md``):

``pool``            ``"token"`` (class token) or ``"avg"`` (GAP: Last LN per token, then mean).
``add_to_input``    ``x_0 = patches + pos_0`` before block 0 (Eq. 8).
``layerwise_from``  ``None`` (no layer-wise PE), ``0`` (every block, LaPE) or ``1`` (all but
                    block 0, PVG/MPVG).
``hierarchical``    ``pos_l = LN'_l(pos_{l-1})`` (True) or ``LN'_l(pos_0)`` (False).
``last_ln_pe``      ``None`` or ``k``: the Last LN's output gets ``+ LN''(pos_k)``; ``k = 0`` is MPVG.

A method is named by a preset (``"mpvg"``), a mapping of knobs with an optional ``base`` preset
(``{"base": "mpvg", "last_ln_pe": 5}``), or a :class:`PEMethod`. Models take the resolved
:class:`PEMethod` as a constructor argument; nothing downstream branches on the preset's name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Union

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
        if self.pool not in ("token", "avg"):
            raise ValueError(f"pool must be 'token' or 'avg', got {self.pool!r}")
        for name in ("add_to_input", "hierarchical"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.layerwise_from not in (None, 0, 1) or isinstance(self.layerwise_from, bool):
            raise ValueError(
                f"layerwise_from must be null, 0 or 1, got {self.layerwise_from!r}"
            )
        if self.last_ln_pe is not None:
            if isinstance(self.last_ln_pe, bool) or not isinstance(self.last_ln_pe, int):
                raise ValueError(
                    f"last_ln_pe must be null or a block index >= 0, got {self.last_ln_pe!r}"
                )
            if self.last_ln_pe < 0:
                raise ValueError(f"last_ln_pe must be >= 0, got {self.last_ln_pe}")
            if self.pool == "token":
                raise ValueError(
                    "last_ln_pe needs pool='avg': with a class token the Last-LN PE term never "
                    "reaches the head"
                )
            if self.last_ln_pe > 0 and self.layerwise_from is None:
                raise ValueError(
                    f"last_ln_pe={self.last_ln_pe} names a layer-wise PE but layerwise_from is "
                    "null; use last_ln_pe=0 or set layerwise_from to 0 or 1"
                )
        if self.layerwise_from is None and not self.add_to_input:
            raise ValueError(
                "add_to_input=false with layerwise_from=null leaves the model without any "
                "position information; set add_to_input=true or layerwise_from to 0 or 1"
            )

    @property
    def has_class_token(self) -> bool:
        return self.pool == "token"

    def blocks_with_pe(self, depth: int) -> list[int]:
        """Indices of the blocks that receive an LN'-delivered PE."""
        if self.layerwise_from is None:
            return []
        return list(range(self.layerwise_from, depth))

    def validate_for_depth(self, depth: int) -> None:
        """Raise ``ValueError`` when a knob points past a model of ``depth`` blocks."""
        if self.last_ln_pe is None:
            return
        allowed = sorted({0, *self.blocks_with_pe(depth)})
        if self.last_ln_pe not in allowed:
            raise ValueError(
                f"last_ln_pe={self.last_ln_pe} is not a PE of this {depth}-block model; "
                f"allowed: {allowed[0]}..{allowed[-1]}"
                + (f" (block {self.last_ln_pe} gets no LN'-PE)" if self.last_ln_pe < depth else "")
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def label(self) -> str:
        return method_label(self)


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


def _canonical_knobs(method: PEMethod) -> dict[str, Any]:
    knobs = method.to_dict()
    if method.layerwise_from is None:
        knobs["hierarchical"] = True  # meaningless without layer-wise PE: one canonical form
    return knobs


def resolve_method(value: MethodLike) -> PEMethod:
    """Turn a preset name, a knob mapping (optionally with ``base``) or a PEMethod into a PEMethod."""
    if isinstance(value, PEMethod):
        return value
    if isinstance(value, str):
        if value not in PRESETS:
            raise ValueError(
                f"unknown method {value!r}; presets: {', '.join(PRESETS)} "
                f"(or a mapping of knobs: {', '.join(KNOBS)})"
            )
        return PRESETS[value]
    if isinstance(value, Mapping):
        knobs = dict(value)
        base_name = knobs.pop("base", None)
        unknown = sorted(set(knobs) - set(KNOBS))
        if unknown:
            raise ValueError(
                f"unknown method knob(s) {', '.join(map(repr, unknown))}; "
                f"allowed: base, {', '.join(KNOBS)}"
            )
        base = resolve_method(base_name) if base_name is not None else PEMethod()
        if base_name is not None and not isinstance(base_name, str):
            raise ValueError(f"method base must be a preset name, got {base_name!r}")
        return dataclasses.replace(base, **knobs)
    raise ValueError(
        f"a method must be a preset name or a mapping of knobs, got {type(value).__name__}"
    )


def method_label(value: MethodLike) -> str:
    """A short, stable, human-readable name: the preset's name or ``base[knob=value,...]``."""
    method = resolve_method(value)
    knobs = _canonical_knobs(method)
    best_name, best_diff = "default", None
    for name, preset in PRESETS.items():
        preset_knobs = _canonical_knobs(preset)
        diff = {k: v for k, v in knobs.items() if preset_knobs[k] != v}
        if best_diff is None or len(diff) <= len(best_diff):  # ties: the later, richer preset
            best_name, best_diff = name, diff
        if not diff:
            return name
    assert best_diff is not None
    inner = ",".join(f"{k}={_fmt(v)}" for k, v in best_diff.items())
    return f"{best_name}[{inner}]"


def _fmt(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def canonical_method_dict(value: MethodLike) -> dict[str, Any]:
    """Knobs in canonical form, used for job keys (equivalent methods hash the same)."""
    return _canonical_knobs(resolve_method(value))
