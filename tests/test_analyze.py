"""`mpvgbench analyze`: numbers checked against direct computations, figures and the database.

The direct computations below walk the real model's own modules by hand (patch_embed, blocks,
norm); the analysis gets the same tensors from forward hooks, so agreement checks the hooks.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

import mpvgbench.cli.analyze  # noqa: F401 - registers the command
from mpvgbench.analyze import (
    NO_LAYERWISE_NOTE,
    collect_activations,
    cosine,
    last_ln_stats,
    layer_correlations,
    pearson,
)
from mpvgbench.analyze_run import analyze_run
from mpvgbench.cli import cli
from mpvgbench.models import build_model

SPEC = """\
name: analyze-test
models: [vit_micro]
methods: [default, pvg, mpvg]
datasets: [digits]
seeds: [0]
recipe: {epochs: 2, max_steps_per_epoch: 4, eval_max_batches: 2}
executor: {name: local, workers: 1, device: cpu}
"""


# ------------------------------------------------------------------------------- pure numbers


def test_pearson_self_one_negation_minus_one() -> None:
    a = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    assert pearson(a, a) == pytest.approx(1.0, abs=1e-12)
    assert pearson(a, -a) == pytest.approx(-1.0, abs=1e-12)
    assert pearson(a, 3 * a + 2) == pytest.approx(1.0, abs=1e-12)  # scale and shift free
    b = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    ref = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]).double())[0, 1].item()
    assert pearson(a, b) == pytest.approx(ref, abs=1e-12)
    assert math.isnan(pearson(a, torch.ones_like(a)))  # undefined, not 0
    with pytest.raises(ValueError, match="equal shapes"):
        pearson(a, a[:8])


def test_cosine() -> None:
    a = torch.tensor([1.0, 2.0, 3.0])
    assert cosine(a, 2 * a) == pytest.approx(1.0)
    assert cosine(a, -a) == pytest.approx(-1.0)
    assert cosine(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])) == pytest.approx(0.0)


# ------------------------------------------------------------------- hooks vs direct computation


def _images(n: int = 12) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(2))


def _hand_built(method: str) -> torch.nn.Module:
    """A vit_micro with non-trivial weights: set gamma/beta of the Last LN and of every LN'."""
    torch.manual_seed(0)
    model = build_model("vit_micro", method, num_classes=10).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(1 + 0.5 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
        model.pos_embed.normal_(generator=g)
    return model


@torch.no_grad()
def _direct(model: Any, images: torch.Tensor) -> dict[str, Any]:
    """The forward pass of MPVGVisionTransformer, step by step, with the real modules."""
    x = model._pos_embed(model.patch_embed(images))
    pe = model.pe_outputs()
    tokens = []
    for blk, blk_pe in zip(model.blocks, pe.blocks):
        tokens.append(blk.norm1(x).mean(0))
        x = blk(x, blk_pe)
    after = model.norm(x) + (pe.last if pe.last is not None else 0)
    torch.testing.assert_close(after, model.forward_features(images))  # the walk is the model
    return {"tokens": tokens, "pe": pe, "before": x.mean(0), "after": after.mean(0),
            "ln_only": model.norm(x).mean(0), "x": x}


@pytest.mark.parametrize("method", ["pvg", "mpvg", "pvg_cls", "lape"])
def test_activations_and_correlation_match_direct_computation(method: str) -> None:
    model, images = _hand_built(method), _images()
    direct = _direct(model, images)
    acts = collect_activations(model, images, batch_size=5)  # 3 uneven batches: true mean over images
    prefix = 1 if method in ("pvg_cls", "lape") else 0
    assert acts.num_prefix_tokens == prefix and acts.grid == (4, 4)
    torch.testing.assert_close(acts.last_in, direct["before"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(acts.last_out, direct["after"], atol=1e-5, rtol=1e-5)
    corr = layer_correlations(acts)
    for layer, pe in enumerate(direct["pe"].blocks):
        if pe is None:
            assert corr[layer] is None
            continue
        expected = pearson(direct["tokens"][layer][prefix:], pe[0][-16:])
        assert corr[layer] == pytest.approx(expected, abs=1e-5)
    assert (corr[0] is None) == (method != "lape")  # PVG delivers from block 1, LaPE from 0
    # per-image token norms of the first images (Fig. 7)
    torch.testing.assert_close(acts.sample_norms_in, direct["x"][:4, prefix:].norm(dim=-1), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ["pvg", "mpvg", "pvg_cls"])
def test_last_ln_stats_match_direct_computation(method: str) -> None:
    model, images = _hand_built(method), _images()
    direct = _direct(model, images)
    stats = last_ln_stats(model, images)
    gamma, beta = model.norm.weight.detach().double(), model.norm.bias.detach().double()
    assert stats["gamma_var"] == pytest.approx(float(((gamma - gamma.mean()) ** 2).mean()), rel=1e-9)
    assert stats["beta_var"] == pytest.approx(float(((beta - beta.mean()) ** 2).mean()), rel=1e-9)
    assert stats["beta_mean"] == pytest.approx(float(beta.mean()), rel=1e-9)
    if method == "pvg_cls":  # the paper's class-token definition: the class-token row
        expected = torch.nn.functional.cosine_similarity(direct["before"][0], direct["after"][0], dim=0)
    else:  # GAP: the token average before vs after
        expected = torch.nn.functional.cosine_similarity(direct["before"].mean(0), direct["after"].mean(0), dim=0)
    assert stats["cosine"] == pytest.approx(float(expected), abs=1e-5)
    if method == "mpvg":  # "after" includes LN''(pos_0); the LN-only variant does not
        ln_only = torch.nn.functional.cosine_similarity(direct["before"].mean(0), direct["ln_only"].mean(0), dim=0)
        assert stats["cosine_ln_only"] == pytest.approx(float(ln_only), abs=1e-5)
        assert stats["cosine_ln_only"] != pytest.approx(stats["cosine"], abs=1e-3)
        assert stats["corr_pe_before"] is not None and stats["corr_pe_after"] is not None
    else:
        assert stats["corr_pe_before"] is None and stats["cosine_ln_only"] == pytest.approx(stats["cosine"])


@pytest.mark.parametrize("method", ["default", "gap", "gap_lastln"])
def test_methods_without_layerwise_pe_say_so(method: str) -> None:
    model = _hand_built(method)
    acts = collect_activations(model, _images(6))
    assert not acts.has_layerwise_pe
    assert layer_correlations(acts) == [None] * 4
    stats = last_ln_stats(model, acts)
    assert stats["beta_var"] is not None and stats["cosine"] is not None
    assert (stats["corr_pe_after"] is not None) == (method == "gap_lastln")


def test_hooks_removed_and_mode_restored() -> None:
    model = _hand_built("mpvg").train()
    collect_activations(model, _images(4))
    assert model.training  # mode restored
    assert not any(m._forward_hooks for m in model.modules())


# -------------------------------------------------------------------- trained runs, the command


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """default, pvg and mpvg on digits (vit_micro, 2 epochs of 4 steps), stored as a spec's runs."""
    from mpvgbench.matrix import expand
    from mpvgbench.spec import load_spec
    from mpvgbench.store import Store
    from mpvgbench.train import train_job
    from tests.jobs import prepare_job

    root = tmp_path_factory.mktemp("analyze")
    spec_path = root / "spec.yaml"
    spec_path.write_text(SPEC)
    spec = load_spec(spec_path)
    jobs = expand(spec)
    db = root / "results.db"
    store = Store(str(db))
    store.register_jobs(jobs, spec.name)
    keys = {}
    for job in jobs:
        run_dir = prepare_job(root / "runs", job.config)
        train_job(job.config, run_dir, device="cpu")
        assert store.ingest_run_dir(run_dir) == "finished"
        keys[job.method_label] = job.key
    store.close()
    return {"root": root, "spec": spec_path, "db": db, "keys": keys}


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, ["analyze", *args], catch_exceptions=False)


def test_command_on_spec_writes_figures_and_stores_numbers(trained: dict[str, Any], tmp_path: Path) -> None:
    from mpvgbench.store import Store

    out = tmp_path / "figs"
    result = _invoke(str(trained["spec"]), "--images", "32", "--samples", "2", "--out", str(out),
                     "--device", "cpu", "--db", str(trained["db"]))
    assert result.exit_code == 0, result.output
    assert "no layer-wise PE: correlation n/a" in result.output
    assert "0.2387" in result.output  # the paper's reference is printed beside ours
    assert (out / "correlation.png").stat().st_size > 10_000
    for key in trained["keys"].values():
        for name in ("heatmaps", "last_ln", "token_norms"):
            png = out / key / f"{name}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert 5_000 < png.stat().st_size < 300_000
    stored = Store(str(trained["db"])).analysis()
    pvg, default = stored[trained["keys"]["pvg"]], stored[trained["keys"]["default"]]
    assert pvg["pe_images"] == 32 and pvg["pe_weights"] == "model"
    assert pvg["pe_correlation"][0] is None and all(isinstance(c, float) for c in pvg["pe_correlation"][1:])
    assert default["pe_correlation"] is None and default["pe_correlation_note"] == NO_LAYERWISE_NOTE
    for values in stored.values():
        assert 0 <= values["last_ln_beta_var"] and -1 <= values["last_ln_cosine"] <= 1
    assert stored[trained["keys"]["mpvg"]]["last_ln_corr_pe_after"] is not None
    dumped = json.loads((out / "analysis.json").read_text())
    assert {a["key"] for a in dumped} == set(trained["keys"].values())


def test_analyze_run_by_key_prefix_matches_function(trained: dict[str, Any], tmp_path: Path) -> None:
    key = trained["keys"]["mpvg"]
    result = _invoke(key[:6], "--images", "16", "--out", str(tmp_path), "--device", "cpu", "--db", str(trained["db"]))
    assert result.exit_code == 0, result.output
    stored = json.loads((tmp_path / "analysis.json").read_text())[0]
    direct = analyze_run(trained["root"] / "runs" / key, images=16)
    assert stored["last_ln"] == pytest.approx(direct["last_ln"])
    assert stored["correlation"] == pytest.approx(direct["correlation"])


def test_command_errors_are_one_line(trained: dict[str, Any], tmp_path: Path) -> None:
    from mpvgbench.spec import load_spec
    from mpvgbench.store import Store
    from tests.jobs import prepare_job

    db = str(trained["db"])
    result = _invoke("ffffffffffff", "--db", db)
    assert result.exit_code == 2 and "no run with key" in result.output

    # a finished run whose checkpoint is gone
    key = trained["keys"]["pvg"]
    copy = tmp_path / "runs" / key
    shutil.copytree(trained["root"] / "runs" / key, copy, ignore=shutil.ignore_patterns("checkpoint.pt"))
    other_db = str(tmp_path / "other.db")
    Store(other_db).ingest_run_dir(copy)
    result = _invoke(key, "--db", other_db, "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert "no checkpoint.pt" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 2  # "analysing ..." + the error line

    # a run that never finished
    from mpvgbench.matrix import expand

    spec = load_spec(trained["spec"])
    job = expand(spec)[0]
    pending_db = str(tmp_path / "pending.db")
    store = Store(pending_db)
    store.register_jobs([job], spec.name)
    prepare_job(tmp_path / "p", job.config)
    result = _invoke(job.key, "--db", pending_db)
    assert result.exit_code == 2 and "not finished" in result.output
    result = _invoke(str(trained["spec"]), "--db", pending_db)
    assert result.exit_code == 2 and "no finished runs" in result.output


def test_plots_do_not_import_analyze_back() -> None:
    # analyze calls the plots with plain arrays; the plots module must not need analyze (no cycle)
    import subprocess
    import sys

    code = "import sys, mpvgbench.analyze_plots; print('mpvgbench.analyze' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    src = (Path(__file__).parents[1] / "mpvgbench" / "analyze_plots.py").read_text()
    assert "mpvgbench.analyze " not in src and "from mpvgbench.analyze import" not in src
