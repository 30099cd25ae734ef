"""The shipped experiment specs expand to exactly the paper's runs (fast: no training)."""

from __future__ import annotations

from pathlib import Path

from mpvgbench.matrix import expand
from mpvgbench.methods import canonical_method_dict
from mpvgbench.paper import FIG5
from mpvgbench.spec import load_spec

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def test_fig5_spec_is_exactly_the_two_runs_of_fig5() -> None:
    """Fig. 5: DeiT-Ti on ImageNet-1K, GAP without layer-wise PE, (a) no PE at the Last LN,
    (b) the initial PE added at the Last LN; no class token in either."""
    jobs = expand(load_spec(EXPERIMENTS / "fig5.yaml"))
    assert len(jobs) == 2 and len({job.key for job in jobs}) == 2
    assert not any(job.depends_on or job.parent_only for job in jobs)
    assert {(job.config.model, job.config.dataset, job.config.seed) for job in jobs} == {
        ("deit_tiny", "imagenet", 0)}
    # transcribed from the paper's text: pool, PE added before block 0, no layer-wise PE
    for job in jobs:
        knobs = canonical_method_dict(job.config.method)
        assert (knobs["pool"], knobs["add_to_input"], knobs["layerwise_from"]) == ("avg", True, None)
    assert sorted(str(canonical_method_dict(job.config.method)["last_ln_pe"]) for job in jobs) == ["0", "None"]
    # ...and the report's Fig. 5 rows find these runs by (model, dataset, knobs)
    expected = {(r.model, r.dataset, repr(sorted(canonical_method_dict(r.method).items()))) for r in FIG5.rows}
    assert {(j.config.model, j.config.dataset, repr(sorted(canonical_method_dict(j.config.method).items())))
            for j in jobs} == expected
    for job in jobs:  # DeiT's ImageNet recipe, nothing overridden
        assert job.config.recipe.epochs == 300 and job.config.img_size == 224
        assert job.config.num_classes == 1000


def test_param_groups_are_expressible_in_a_spec(tmp_path: Path) -> None:
    """A spec can give any model T2T's transfer-style groups; they reach the job's recipe."""
    from mpvgbench.config import ParamGroup

    path = tmp_path / "ft.yaml"
    path.write_text(
        "name: ft\nmodels: [deit_tiny]\nmethods: [mpvg]\ndatasets: [cifar100]\n"
        "model_overrides:\n  deit_tiny:\n    recipe:\n      optimizer: sgd\n      nesterov: false\n"
        "      param_groups:\n        - {match: ['blocks.*', 'patch_embed.*'], lr_scale: 0.01}\n"
        "        - {match: [norm.*], lr_scale: 0}\n"
    )
    (job,) = expand(load_spec(path))
    recipe = job.config.recipe
    assert recipe.param_groups == (ParamGroup(match=("blocks.*", "patch_embed.*"), lr_scale=0.01),
                                   ParamGroup(match=("norm.*",), lr_scale=0.0))
    assert (recipe.optimizer, recipe.nesterov, recipe.decay_all_params) == ("sgd", False, False)
    plain = expand(load_spec(path), smoke=True)[0].config.recipe
    assert plain.param_groups == recipe.param_groups  # smoke runs keep the groups
