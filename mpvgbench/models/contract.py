"""The contract every PE method passes (``mpvgbench check-method NAME``).

For each model family the method claims (a small model of it, on CPU):

``forward``     logits of the right shape, finite; one backward reaches every trainable parameter
                (an unused one would stall DDP without ``find_unused_parameters``)
``params``      the method's own parameters equal what it declares (``expected_parameters``)
``compile``     zero graph breaks under ``torch.compile`` (``torch._dynamo.explain``)
``checkpoint``  a state dict loads strictly into a fresh model and gives the same logits
``ddp``         two optimizer steps under ``DistributedDataParallel`` on gloo (one process)
``fold``        when the method claims an eval-time fold: the folded model's logits match

Each failure is one :class:`ContractFailure` (family, check, message); the shipped methods pass
all of them (tests/models/test_contract.py).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn

from mpvgbench.methods import PEMethod, encoding_info, resolve_method
from mpvgbench.models.pe import PositionEncoding, fold_last_ln_pe

__all__ = ["CONTRACT_MODELS", "ContractFailure", "check_method"]

# family -> (short model name, image size, channels): the smallest member, small inputs
CONTRACT_MODELS: dict[str, tuple[str, int, int]] = {
    "micro": ("vit_micro", 8, 1),
    "deit": ("deit_tiny", 32, 3),
    "vit_lite": ("vit_lite_7_4", 32, 3),
    "t2t": ("t2t_vit_7", 32, 3),
    "ceit": ("ceit_tiny", 32, 3),
    "swin": ("swin_tiny", 32, 3),
}
NUM_CLASSES = 10


@dataclass(frozen=True)
class ContractFailure:
    family: str
    check: str
    message: str

    def __str__(self) -> str:
        return f"FAIL {self.family}: {self.check}: {self.message}"


def claimed_families(method: PEMethod) -> list[str]:
    info = encoding_info(method.encoding)
    return [f for f in CONTRACT_MODELS if info.supports(f)]


def check_method(name: Any, families: Optional[list[str]] = None,
                 report: Callable[[str], None] = lambda _: None) -> list[ContractFailure]:
    """Run the contract for method ``name`` on ``families`` (default: every family it claims)."""
    method = resolve_method(name)
    failures: list[ContractFailure] = []
    for family in families or claimed_families(method):
        for check, run in _CHECKS:
            if check == "fold" and not _claims_fold(method, family):
                continue
            try:
                problem = run(method, family)
            except Exception as exc:  # noqa: BLE001  a failing check is a line of the report
                problem = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            report(f"{'ok  ' if problem is None else 'FAIL'} {family}: {check}")
            if problem is not None:
                failures.append(ContractFailure(family, check, problem))
    return failures


def _build(method: PEMethod, family: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    from mpvgbench.models import build_model

    name, size, chans = CONTRACT_MODELS[family]
    torch.manual_seed(seed)
    model = build_model(name, method, num_classes=NUM_CLASSES, img_size=size, in_chans=chans)
    return model, torch.randn(2, chans, size, size, generator=torch.Generator().manual_seed(1))


def _check_forward(method: PEMethod, family: str) -> Optional[str]:
    model, x = _build(method, family)
    out = model(x)
    if tuple(out.shape) != (2, NUM_CLASSES) or not torch.isfinite(out).all():
        return f"logits of shape {tuple(out.shape)} (finite: {bool(torch.isfinite(out).all())})"
    out.square().mean().backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    return f"no gradient reaches {', '.join(unused[:3])}" if unused else None


def _check_params(method: PEMethod, family: str) -> Optional[str]:
    model, _ = _build(method, family)
    encoding: Optional[PositionEncoding] = getattr(model, "pe_encoding", None)
    if encoding is None:
        return None  # the learned PE: the paper's counts are pinned by tests/models
    declared = type(encoding).expected_parameters(encoding.context) if encoding.context else None
    if declared is None:
        return "the method declares no parameter count (define expected_parameters(context))"
    counted = sum(p.numel() for p in encoding.parameters())
    return None if counted == declared else f"{counted:,} parameters, declared {declared:,}"


def _check_compile(method: PEMethod, family: str) -> Optional[str]:
    model, x = _build(method, family)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model.eval())(x)
    breaks = explanation.graph_break_count
    if breaks:
        reasons = "; ".join(str(r.reason).split("\n")[0] for r in explanation.break_reasons[:2])
        return f"{breaks} graph break(s): {reasons}"
    return None


def _check_checkpoint(method: PEMethod, family: str) -> Optional[str]:
    model, x = _build(method, family, seed=0)
    fresh, _ = _build(method, family, seed=1)
    fresh.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        same = torch.allclose(model.eval()(x), fresh.eval()(x), atol=1e-6)
    return None if same else "a reloaded state dict gives other logits"


@contextlib.contextmanager
def _gloo_group() -> Iterator[None]:
    if dist.is_initialized():
        yield
        return
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=Path(tmp, "store").as_uri(), rank=0, world_size=1)
        try:
            yield
        finally:
            dist.destroy_process_group()


def _check_ddp(method: PEMethod, family: str) -> Optional[str]:
    model, x = _build(method, family)
    with _gloo_group():
        ddp = nn.parallel.DistributedDataParallel(model)
        optimizer = torch.optim.SGD([p for p in ddp.parameters() if p.requires_grad], lr=0.01)
        for _ in range(2):  # DDP reports unused parameters at the second step
            optimizer.zero_grad()
            ddp(x).square().mean().backward()
            optimizer.step()
    return None


def _claims_fold(method: PEMethod, family: str) -> bool:
    encoding_cls = encoding_info(method.encoding).factory
    return method.last_ln_pe is not None or bool(getattr(encoding_cls, "foldable", False))


def _check_fold(method: PEMethod, family: str) -> Optional[str]:
    model, x = _build(method, family)
    model.eval()
    encoding = getattr(model, "pe_encoding", None)
    folded = fold_last_ln_pe(model)
    if encoding is not None and encoding.foldable:
        folded = encoding.fold(folded)  # type: ignore[attr-defined]
    with torch.no_grad():
        same = torch.allclose(model(x), folded.eval()(x), atol=1e-5)
    return None if same else "the folded model gives other logits"


_CHECKS: tuple[tuple[str, Callable[[PEMethod, str], Optional[str]]], ...] = (
    ("forward", _check_forward),
    ("params", _check_params),
    ("compile", _check_compile),
    ("checkpoint", _check_checkpoint),
    ("ddp", _check_ddp),
    ("fold", _check_fold),
)
