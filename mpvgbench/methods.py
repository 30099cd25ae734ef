"""Position-embedding methods as data.

Every variant of the paper is described by five knobs (see ``docs/methods.md``):

``pool``            ``"token"`` (class token) or ``"avg"`` (GAP: Last LN per token, then mean).
``add_to_input``    ``x_0 = patches + pos_0`` before block 0 (Eq. 8).
``layerwise_from``  ``None`` (no layer-wise PE), ``0`` (every block, LaPE) or ``1`` (all but
                    block 0, PVG/MPVG).
``hierarchical``    ``pos_l = LN'_l(pos_{l-1})`` (True) or ``LN'_l(pos_0)`` (False).
``last_ln_pe``      ``None`` or ``k``: the Last LN's output gets ``+ LN''(pos_k)``; ``k = 0`` is MPVG.

Beyond the five knobs, ``encoding`` names the method module that provides the position
information: ``learned`` (the paper's learnable absolute PE, the default), ``sincos2d`` (fixed 2-D
sin-cos, MAE), ``rope_axial`` / ``rope_mixed`` (rotary, Heo et al.), ``peg`` (CPVT's conditional PE)
or a plugin's method (``mpvgbench.pe_plugins``). The knobs still govern the absolute PE (``pos_0``)
where the encoding has one. ``plugin`` is a plugin method's identity (module and a hash of its
source), part of the job key so that an edited plugin never reuses stale results.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

from mpvgbench.errors import MethodError, UnknownNameError

Pool = Literal["token", "avg"]

KNOBS: tuple[str, ...] = ("pool", "add_to_input", "layerwise_from", "hierarchical", "last_ln_pe")
DEFAULT_ENCODING = "learned"


@dataclass(frozen=True)
class EncodingInfo:
    """What the registry knows about a PE method module, without importing torch.

    ``factory`` is ``"module:attribute"`` for the shipped methods (imported when a model is built)
    or the class itself for a plugin. ``families``: the model families it is defined for (``None``:
    every family). ``carries_position``: the module gives position information by itself (rotary,
    PEG), so a method may run without any absolute PE.
    """

    name: str
    summary: str
    factory: Any
    families: Optional[tuple[str, ...]] = None
    carries_position: bool = False
    source: str = "mpvgbench"
    identity: Optional[str] = None  # plugins: "module:sha256-prefix of the source"
    reference: str = ""

    def supports(self, family: str) -> bool:
        return self.families is None or family in self.families


_VIT_FAMILIES = ("deit", "vit_lite", "micro")
# RoPE-ViT defines RoPE for Swin too (RoPE-Swin: rotary inside each window's attention)
_ROPE_FAMILIES = (*_VIT_FAMILIES, "swin")
ENCODINGS: dict[str, EncodingInfo] = {
    DEFAULT_ENCODING: EncodingInfo(
        DEFAULT_ENCODING, "learnable absolute PE (the paper's five knobs)", None,
        reference="Lee et al., AAAI 2025"),
    "sincos2d": EncodingInfo(
        "sincos2d", "fixed 2-D sin-cos absolute PE (frozen)", "mpvgbench.models.pe_methods:SinCos2D",
        _VIT_FAMILIES, reference="MAE, He et al., arXiv 2111.06377; MoCo v3, arXiv 2104.02057"),
    "rope_axial": EncodingInfo(
        "rope_axial", "rotary on q/k, axial frequencies (theta 100; Swin: per window, theta 50)",
        "mpvgbench.models.pe_methods:RopeAxial", _ROPE_FAMILIES, carries_position=True,
        reference="RoPE-ViT, Heo et al., arXiv 2403.13298"),
    "rope_mixed": EncodingInfo(
        "rope_mixed", "rotary on q/k, learnable mixed frequencies per block and head (theta 10)",
        "mpvgbench.models.pe_methods:RopeMixed", _ROPE_FAMILIES, carries_position=True,
        reference="RoPE-ViT, Heo et al., arXiv 2403.13298"),
    "peg": EncodingInfo(
        "peg", "conditional PE: 3x3 depthwise conv after block 0", "mpvgbench.models.pe_methods:PEG",
        _VIT_FAMILIES, carries_position=True, reference="CPVT, Chu et al., arXiv 2102.10882"),
}


def encoding_info(name: str) -> EncodingInfo:
    """The registered encoding ``name`` (configured plugins are loaded on first miss)."""
    if name not in ENCODINGS:
        _load_plugins_for(name)
    if name not in ENCODINGS:
        raise UnknownNameError(
            f"unknown PE method {name!r}; known: {', '.join(ENCODINGS)} (a plugin's method needs "
            "`plugins: [file.py]` in the spec or its package installed)"
        )
    return ENCODINGS[name]


@dataclass(frozen=True)
class PEMethod:
    """The five knobs of a position-embedding method (``methods.md``)."""

    pool: Pool = "token"
    add_to_input: bool = True
    layerwise_from: int | None = None
    hierarchical: bool = True
    last_ln_pe: int | None = None
    encoding: str = DEFAULT_ENCODING
    plugin: Optional[str] = None  # a plugin method's identity (module:source hash); in the job key

    def __post_init__(self) -> None:
        _check_knobs(self)
        if self.layerwise_from is None:  # meaningless without layer-wise PE: one canonical form
            object.__setattr__(self, "hierarchical", True)

    @property
    def has_class_token(self) -> bool:
        return self.pool == "token"

    @property
    def has_absolute_pe(self) -> bool:
        """Whether the model holds ``pos_0`` (some knob uses it)."""
        return self.add_to_input or self.layerwise_from is not None or self.last_ln_pe is not None

    def validate_for_family(self, family: str, model: str = "") -> None:
        """One-line :class:`MethodError` when the encoding is not defined for ``family``."""
        info = encoding_info(self.encoding)
        if not info.supports(family):
            assert info.families is not None
            raise MethodError(
                f"PE method {self.encoding!r} is not defined for {model or family} (family {family}); "
                f"it runs on: {', '.join(info.families)}"
            )

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
        return self.to_json()

    def to_json(self) -> dict[str, Any]:
        """The stored form (config.json, the database, the job key): the five knobs, plus
        ``encoding`` / ``plugin`` only when not the default (so earlier keys are unchanged)."""
        data = {k: getattr(self, k) for k in KNOBS}
        if self.encoding != DEFAULT_ENCODING:
            data["encoding"] = self.encoding
        if self.plugin is not None:
            data["plugin"] = self.plugin
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PEMethod:
        """Inverse of :meth:`to_json`."""
        return cls(**{k: data[k] for k in (*KNOBS, "encoding", "plugin") if k in data})

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
    if not isinstance(method.encoding, str) or not method.encoding:
        raise MethodError(f"encoding must be a PE method name, got {method.encoding!r}")
    info = ENCODINGS.get(method.encoding)  # unknown (a plugin not loaded here): checked at build
    carries_position = info is None or info.carries_position
    if method.layerwise_from is None and not method.add_to_input and not carries_position:
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
    # beyond the paper (docs/methods.md): each with its original paper's own setting
    "sincos2d": PEMethod(encoding="sincos2d"),  # MAE / MoCo v3: fixed PE added at the input
    "rope_axial": PEMethod(add_to_input=False, encoding="rope_axial"),  # RoPE-ViT: no APE
    "rope_mixed": PEMethod(add_to_input=False, encoding="rope_mixed"),
    "peg": PEMethod(add_to_input=False, encoding="peg"),  # CPVT: PEG instead of the APE
    "peg_gap": PEMethod(pool="avg", add_to_input=False, encoding="peg"),  # CPVT-GAP
}
PAPER_PRESETS: tuple[str, ...] = ("default", "gap", "gap_lastln", "lape", "lape_gap", "pvg_cls", "pvg", "mpvg")


def register_preset(name: str, method: PEMethod) -> None:
    """Add a named preset (a plugin's method); a name cannot be taken twice by different methods."""
    if name in PRESETS and PRESETS[name] != method:
        raise MethodError(f"PE method name {name!r} is already taken by {PRESETS[name].encoding!r}")
    PRESETS[name] = method
    _cached_label.cache_clear()


MethodLike = Union[str, Mapping[str, Any], PEMethod]

_LABEL_RE = re.compile(r"^([a-z][a-z0-9_]*)\[([a-z_]+=[A-Za-z0-9_]+(?:,[a-z_]+=[A-Za-z0-9_]+)*)\]$")
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
        if value not in PRESETS and "[" not in value:
            _load_plugins_for(value)
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
        unknown = sorted(set(knobs) - {*KNOBS, "encoding", "plugin"}, key=str)
        if unknown:
            raise MethodError(
                f"unknown method knob(s) {', '.join(map(repr, unknown))}; "
                f"allowed: base, {', '.join(KNOBS)}, encoding"
            )
        if base_name is not None and not isinstance(base_name, str):
            raise MethodError(f"method base must be a preset name, got {type(base_name).__name__}")
        base = resolve_method(base_name) if base_name is not None else PEMethod()
        if "encoding" in knobs and "plugin" not in knobs and knobs["encoding"] != base.encoding:
            knobs["plugin"] = encoding_info(knobs["encoding"]).identity  # a plugin's identity
        return dataclasses.replace(base, **knobs)
    raise MethodError(
        f"a method must be a preset name or a mapping of knobs, got {type(value).__name__}"
    )


_plugin_loader: Optional[Callable[[], None]] = None


def set_plugin_loader(loader: Callable[[], None]) -> None:
    """Installed by ``mpvgbench.pe_plugins`` on import (this module must not import it: it sits
    below it): loads the plugins the environment and the installed entry points name."""
    global _plugin_loader
    _plugin_loader = loader


def _load_plugins_for(name: str) -> None:
    """A name nothing registered has may be a plugin's: load the configured plugins."""
    if _plugin_loader is not None:
        _plugin_loader()


def method_label(value: MethodLike) -> str:
    """A short, stable, human-readable name: the preset's name or ``base[knob=value,...]``.

    Only presets of the same encoding (and plugin) are candidates, so the paper's labels never
    change when a method is added."""
    method = resolve_method(value)
    knobs = {k: getattr(method, k) for k in KNOBS}
    best_name, best_diff = "default", None
    for name, preset in PRESETS.items():
        if (preset.encoding, preset.plugin) != (method.encoding, method.plugin):
            continue
        preset_knobs = {k: getattr(preset, k) for k in KNOBS}
        diff = {k: v for k, v in knobs.items() if preset_knobs[k] != v}
        if best_diff is None or len(diff) <= len(best_diff):  # ties: the later, richer preset
            best_name, best_diff = name, diff
        if not diff:
            return name
    if best_diff is None:  # an encoding without a preset (cannot come from a registered name)
        best_name, best_diff = "default", {"encoding": method.encoding, **knobs}
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
