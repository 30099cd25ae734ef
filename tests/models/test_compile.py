"""Compile readiness: every family x method traces without graph breaks and trains compiled.

``torch._dynamo.explain`` (tracing only, no code generation) checks every model family x
{default, gap, lape, pvg, mpvg} at the catalog's smoke size, in train mode (grad on) and eval
mode (no grad, the in-place PE add), and the folded MPVG model. Three compiled training steps
are compared with eager: ``aot_eager`` in the default run, inductor (CPU) under ``-m slow``
(inductor compiles here; one micro-ViT combination took 300 s under load). Tracing is not cheap on the 2-core CI machine (measured under heavy
load: 15-30 s per micro-ViT combination, 70-150 s per Swin one), so the default run covers the
micro ViT (the same PE chain, PEBlock and fold code as DeiT / T2T / ViT-Lite) and ``-m slow``
the full matrix.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mpvgbench.models as M
from mpvgbench.catalog import MODEL_TABLE
from mpvgbench.models.pe import fold_last_ln_pe

FAMILIES = ["deit_tiny", "swin_tiny", "ceit_tiny", "t2t_vit_7", "vit_lite_7_4", "vit_micro"]
METHODS = ["default", "gap", "lape", "pvg", "mpvg"]
CHEAP = "vit_micro"
# the cheapest model with the longest PE chain: LN' on blocks 1.. plus LN'' (the Last-LN term)
REPRESENTATIVE = [(CHEAP, "mpvg")]

# Eager vs inductor, float32, three SGD steps. Inductor fuses and reorders reductions (LayerNorm,
# softmax, matmul tiling), which moves each result by ~1e-6 relative; three plain SGD steps
# amplify that by a small factor only. 1e-3 relative (1e-4 absolute) leaves two orders of margin
# over that and is still far below what a real defect does: dropping or double-adding a PE term
# changes the loss of these models in the second or first decimal.
LOSS_RTOL, LOSS_ATOL = 1e-3, 1e-4


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    # every test traces new module instances through the same forward code objects; without a
    # reset they pile up against dynamo's recompile limit and later tests would fall back to eager
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _build(name: str, method: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    info = MODEL_TABLE[name]
    torch.manual_seed(seed)
    model = M.build_model(name, method, num_classes=10, img_size=info.smoke_img_size)
    # dropout / drop path draw different masks in eager and compiled code: switch them off so
    # the loss comparison measures the graph, not the random stream
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if hasattr(m, "drop_prob"):
            m.drop_prob = 0.0
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(4, info.in_chans, info.smoke_img_size, info.smoke_img_size, generator=g)
    y = torch.randint(0, 10, (4,), generator=g)
    return model, x, y


def _graph_breaks(fn: object, *args: torch.Tensor) -> tuple[int, list[str]]:
    out = torch._dynamo.explain(fn)(*args)
    return out.graph_break_count, [str(b.reason) for b in out.break_reasons]


def _assert_no_graph_breaks(name: str, method: str) -> None:
    model, x, y = _build(name, method)
    model.train()

    def loss_fn(inp: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(inp), y)

    count, reasons = _graph_breaks(loss_fn, x)
    assert count == 0, f"train: {reasons}"
    model.eval()
    with torch.no_grad():
        count, reasons = _graph_breaks(model, x)
    assert count == 0, f"eval: {reasons}"
    if method == "mpvg":  # the deployment form: LN'' folded into the head bias
        folded = fold_last_ln_pe(model)
        with torch.no_grad():
            count, reasons = _graph_breaks(folded, x)
        assert count == 0, f"folded: {reasons}"


@pytest.mark.parametrize("method", METHODS)
def test_no_graph_breaks(method: str) -> None:
    _assert_no_graph_breaks(CHEAP, method)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", [f for f in FAMILIES if f != CHEAP])
def test_no_graph_breaks_every_family(name: str, method: str) -> None:
    _assert_no_graph_breaks(name, method)


def _three_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, backend: str | None) -> list[float]:
    model.train()
    step_model = torch.compile(model, backend=backend) if backend else model
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(3):
        loss = F.cross_entropy(step_model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def _compare_compiled_training(name: str, method: str, backend: str) -> None:
    eager, x, y = _build(name, method)
    compiled = copy.deepcopy(eager)
    want = _three_steps(eager, x, y, backend=None)
    got = _three_steps(compiled, x, y, backend=backend)
    assert all(torch.isfinite(torch.tensor(got)))
    assert want[0] != want[-1]  # the steps do train (a frozen model would compare trivially)
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=LOSS_RTOL, atol=LOSS_ATOL)


@pytest.mark.parametrize(("name", "method"), REPRESENTATIVE)
def test_aot_compiled_training_matches_eager(name: str, method: str) -> None:
    # aot_eager: dynamo + AOTAutograd (functionalised forward and backward graphs, where in-place
    # PE adds and the LN'' term would go wrong) without inductor's C++ code generation, which
    # alone costs minutes on the 2-core CI machine (test below)
    _compare_compiled_training(name, method, "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", FAMILIES)
def test_aot_compiled_training_matches_eager_every_family(name: str, method: str) -> None:
    """Every model x preset through dynamo + AOTAutograd (the graphs inductor would compile)."""
    _compare_compiled_training(name, method, "aot_eager")


# Inductor's C++ code generation costs 1-5 minutes per model on the 2-core CI machine: CI
# compiles one method per family (MPVG, the one with every PE path); MPVGBENCH_COMPILE_MATRIX=full
# compiles all 30 (a GPU machine: benchmarks/gpu_check.py compiles them all anyway).
INDUCTOR_CASES = [(name, method) for name in FAMILIES for method in METHODS
                  if method == "mpvg" or os.environ.get("MPVGBENCH_COMPILE_MATRIX") == "full"]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "method"), INDUCTOR_CASES)
def test_inductor_training_matches_eager(name: str, method: str) -> None:
    # measured: vit_micro / mpvg 300 s on the loaded 2-core machine (C++ compile of fwd + bwd)
    _compare_compiled_training(name, method, "inductor")
