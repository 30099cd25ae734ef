"""Matrix expansion: cells, keys, recipes, zip/include/exclude, init_from, smoke."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mpvgbench.config import TrainConfig, config_key
from mpvgbench.matrix import Job, cells as cells_of, expand, select, sweep_text
from mpvgbench.recipes import default_recipe
from mpvgbench.spec import SpecError, load_spec, parse_spec

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def spec(**fields: Any) -> Any:
    base: dict[str, Any] = {"name": "m", "models": ["deit_tiny"], "methods": ["mpvg"], "datasets": ["imagenet"]}
    return parse_spec({**base, **fields})


def cells(jobs: list[Job]) -> list[tuple[str, str, str, int]]:
    return [j.cell for j in jobs]


def by_cell(path: Path) -> dict[tuple[str, str, str, int], str]:
    return {j.cell: j.key for j in expand(load_spec(path))}


def test_same_cell_in_three_tables_is_one_run() -> None:
    cell = ("deit_tiny", "mpvg", "imagenet", 0)
    t1, t5, t6 = (by_cell(EXPERIMENTS / f"table{n}.yaml") for n in (1, 5, 6))
    assert t1[cell] == t5[cell] == t6[cell]
    assert len(set(t5.values())) == 4 and len(set(t6.values())) == 4


def test_table2_finetunes_from_table1_runs() -> None:
    t1 = by_cell(EXPERIMENTS / "table1.yaml")
    jobs = expand(load_spec(EXPERIMENTS / "table2.yaml"))
    position = {j.key: i for i, j in enumerate(jobs)}
    finetunes = [j for j in jobs if j.model == "t2t_vit_7" and j.dataset == "cifar100"]
    assert len(finetunes) == 4
    for job in finetunes:
        parent_key = t1[(job.model, job.method_label, "imagenet", job.seed)]
        assert job.depends_on == job.config.init_from == parent_key
        assert position[parent_key] < position[job.key]
        parent = jobs[position[parent_key]]
        assert parent.parent_only and parent.config.recipe == default_recipe("t2t", "imagenet")
        recipe = job.config.recipe
        assert (recipe.epochs, recipe.batch_size, recipe.lr, recipe.weight_decay) == (60, 128, 5e-2, 5e-4)
        assert recipe.optimizer == "sgd" and recipe.param_groups  # T2T-ViT's transfer script
        assert job.config.img_size == 224 and job.config.num_classes == 100
    lite = [j for j in jobs if j.model == "vit_lite_7_4"]
    assert all(j.config.img_size == 32 and j.config.init_from is None for j in lite)


def test_a_parent_that_is_also_a_cell_is_not_parent_only() -> None:
    s = spec(models=["t2t_vit_7"], datasets=["imagenet", "cifar100"],
             model_overrides={"t2t_vit_7": {"init_from": {"dataset": "imagenet"}}})
    jobs = expand(s)
    assert [j.cell[2] for j in jobs] == ["imagenet", "cifar100"]
    assert not jobs[0].parent_only and jobs[1].depends_on == jobs[0].key
    assert jobs[0].config.init_from is None  # init_from never points a run at itself


def test_init_from_run_key_and_parent_recipe_override() -> None:
    jobs = expand(spec(init_from="0123456789abcdef"))
    assert jobs[0].config.init_from == jobs[0].depends_on == "0123456789abcdef"
    assert expand(spec(init_from="0123456789abcdef"), smoke=True)[0].config.init_from is None
    jobs = expand(spec(datasets=["cifar100"], init_from={"dataset": "imagenet", "recipe": {"epochs": 100}}))
    assert jobs[0].parent_only and jobs[0].config.recipe.epochs == 100


def test_operational_settings_do_not_change_keys() -> None:
    plain = expand(spec(seeds=[0, 1]))
    busy = expand(spec(
        seeds=[0, 1], name="other", description="x",
        data={"roots": {"imagenet": "/somewhere"}, "num_workers": 3, "download": True},
        executor={"name": "local", "workers": 8, "device": "cpu"},
        results={"db": "sqlite:///x.db", "runs_dir": "/tmp/r"},
    ))
    assert [j.key for j in plain] == [j.key for j in busy]


def test_keys_are_config_keys_and_configs_are_complete() -> None:
    for path in sorted(EXPERIMENTS.glob("*.yaml")):
        for smoke in (False, True):
            for job in expand(load_spec(path), smoke=smoke):
                assert job.key == config_key(job.config) == job.config.key()
                assert job.method_label == job.config.method_label
                assert type(job.config).model_validate(job.config.model_dump()) == job.config


def test_product_order_is_deterministic() -> None:
    s = spec(models=["deit_tiny", "deit_small"], methods=["default", "mpvg"], seeds=[1, 0])
    jobs = expand(s)
    assert cells(jobs) == [
        (m, me, "imagenet", sd)
        for m in ("deit_tiny", "deit_small") for me in ("default", "mpvg") for sd in (1, 0)
    ]
    assert [j.key for j in expand(s)] == [j.key for j in jobs]


def test_zip_pairs_axes() -> None:
    s = spec(models=["vit_lite_7_4", "t2t_vit_7"], datasets=["cifar100", "imagenet"],
             methods=["gap", "pvg"], zip=[["models", "datasets"]])
    assert cells(expand(s)) == [
        ("vit_lite_7_4", "gap", "cifar100", 0), ("vit_lite_7_4", "pvg", "cifar100", 0),
        ("t2t_vit_7", "gap", "imagenet", 0), ("t2t_vit_7", "pvg", "imagenet", 0),
    ]
    s = spec(methods=["gap", "pvg"], seeds=[3, 4], zip=[["seeds", "methods"]])
    assert cells(expand(s)) == [("deit_tiny", "gap", "imagenet", 3), ("deit_tiny", "pvg", "imagenet", 4)]


def test_include_adds_cells_and_fills_missing_keys_with_the_axis() -> None:
    s = spec(seeds=[0, 1], include=[
        {"model": "deit_small", "method": "gap", "dataset": "imagenet", "seed": 7},
        {"model": "ceit_tiny"},
        {"model": "deit_tiny", "method": "mpvg", "seed": 0},  # already a cell: no duplicate
    ])
    assert cells(expand(s)) == [
        ("deit_tiny", "mpvg", "imagenet", 0), ("deit_tiny", "mpvg", "imagenet", 1),
        ("deit_small", "gap", "imagenet", 7),
        ("ceit_tiny", "mpvg", "imagenet", 0), ("ceit_tiny", "mpvg", "imagenet", 1),
    ]


def test_exclude_by_label_by_knobs_and_after_include() -> None:
    base = dict(models=["deit_tiny", "t2t_vit_7"], methods=["default", "pvg", {"base": "mpvg", "last_ln_pe": 5}],
                seeds=[0, 1], include=[{"model": "deit_small", "method": "pvg", "seed": 0}])
    every = cells(expand(spec(**base)))
    assert len(every) == 13
    no_pvg = cells(expand(spec(**base, exclude=[{"method": "pvg"}])))
    assert no_pvg == [c for c in every if c[1] != "pvg"]
    by_knobs = cells(expand(spec(**base, exclude=[{"method": {"base": "mpvg", "last_ln_pe": 5}, "model": "t2t_vit_7"}])))
    assert by_knobs == [c for c in every if not (c[1] == "mpvg[last_ln_pe=5]" and c[0] == "t2t_vit_7")]
    by_label = cells(expand(spec(**base, exclude=[{"method": "mpvg[last_ln_pe=5]", "seed": 1}])))
    assert by_label == [c for c in every if not (c[1] == "mpvg[last_ln_pe=5]" and c[3] == 1)]


def test_recipe_precedence_family_then_spec_then_model() -> None:
    s = spec(models=["deit_tiny", "swin_tiny"], recipe={"epochs": 10, "lr": 1e-4},
             model_overrides={"swin_tiny": {"recipe": {"lr": 2e-4}, "img_size": 256}})
    deit, swin = expand(s)
    assert (deit.config.recipe.epochs, deit.config.recipe.lr, deit.config.recipe.warmup_epochs) == (10, 1e-4, 5)
    assert (swin.config.recipe.epochs, swin.config.recipe.lr, swin.config.recipe.warmup_epochs) == (10, 2e-4, 20)
    assert swin.config.recipe.grad_clip == 5.0 and swin.config.img_size == 256 and deit.config.img_size == 224


def test_dataset_defaults_and_overrides() -> None:
    (micro,) = expand(spec(models=["vit_micro"], datasets=["digits"], methods=["gap"]))
    assert (micro.config.img_size, micro.config.num_classes) == (8, 10)
    assert micro.config.recipe.randaugment is None and micro.config.recipe.mixup == 0
    (folder,) = expand(spec(datasets=["imagefolder"], dataset_overrides={"imagefolder": {"num_classes": 37}}))
    assert (folder.config.img_size, folder.config.num_classes) == (224, 37)


def test_smoke_maps_every_cell_to_a_tiny_run_on_its_datasets_stand_in() -> None:
    """ImageNet cells train on the generated ImageNet-format stand-in (the real reader and the
    recipe's real transforms), the digits quickstart on the synthetic tensors."""
    real = expand(load_spec(EXPERIMENTS / "table1.yaml")) + expand(load_spec(EXPERIMENTS / "quickstart.yaml"))
    smoke = expand(load_spec(EXPERIMENTS / "table1.yaml"), smoke=True) + expand(
        load_spec(EXPERIMENTS / "quickstart.yaml"), smoke=True)
    assert len(smoke) == len(real)
    assert not {j.key for j in smoke} & {j.key for j in real}
    for job in smoke:
        c, r = job.config, job.config.recipe
        assert c.dataset == ("synthetic" if c.model == "vit_micro" else "imagenet_synthetic")
        assert c.num_classes == 10
        assert r.randaugment == default_recipe_for(job).randaugment and r.mixup == default_recipe_for(job).mixup
        assert r.epochs <= 2 and r.max_steps_per_epoch == 2 and r.eval_max_batches == 1 and r.batch_size <= 8
        assert r.warmup_epochs <= 1 and r.cooldown_epochs == 0
        expected = {"swin_tiny": 64, "vit_micro": 8}.get(c.model, 32)
        assert c.img_size == expected
    assert {j.cell[1] for j in smoke} == {j.cell[1] for j in real}


def default_recipe_for(job: Any) -> Any:
    from mpvgbench.catalog import model_info
    from mpvgbench.recipes import default_recipe

    return default_recipe(model_info(job.model).family, "digits" if job.model == "vit_micro" else "imagenet")


def test_smoke_keeps_init_from_inside_the_smoke_matrix() -> None:
    jobs = expand(load_spec(EXPERIMENTS / "table2.yaml"), smoke=True)
    assert {j.dataset for j in jobs} == {"imagenet_synthetic", "cifar100_synthetic"}
    keys = {j.key for j in jobs}
    children = [j for j in jobs if j.depends_on]
    assert len(children) == 4 and all(j.depends_on in keys for j in children)


def test_img_size_must_fit_the_patch() -> None:
    with pytest.raises(SpecError, match="model_overrides.deit_tiny.img_size: .* multiple of 16"):
        expand(spec(model_overrides={"deit_tiny": {"img_size": 200}}))


def test_ten_thousand_jobs_have_distinct_keys_equal_to_config_key() -> None:
    """Speed is benchmarks/bench_cli.py's business; here: one key path, no collisions."""
    methods: list[Any] = ["default", "gap", "gap_lastln", "lape", "lape_gap", "pvg_cls", "pvg", "mpvg"]
    methods += [{"base": "mpvg", "last_ln_pe": k} for k in range(1, 12)] + [{"base": "mpvg", "hierarchical": False}]
    big = spec(models=["deit_tiny", "deit_small", "deit_base", "ceit_tiny", "swin_tiny"], methods=methods,
               datasets=["imagenet", "cifar100"], seeds=list(range(50)))
    jobs = expand(big)
    assert len(jobs) == len({j.key for j in jobs}) == 10_000
    for job in jobs[::997]:
        assert job.key == config_key(TrainConfig.model_validate(job.config.model_dump(mode="json")))


def test_only_dataset_selects_smoke_cells_by_the_dataset_their_stand_in_replaces() -> None:
    """`run SPEC --smoke --only dataset=cifar100` keeps the CIFAR-100 cells (they train on the
    cifar100_synthetic stand-in) and the ImageNet runs they start from; digits on `synthetic`."""
    from mpvgbench.matrix import select

    jobs = expand(load_spec(EXPERIMENTS / "table2.yaml"), smoke=True)
    kept = select(jobs, ["dataset=cifar100"])
    fine_tunes = [job for job in kept if not job.parent_only]
    assert fine_tunes and {job.dataset for job in fine_tunes} == {"cifar100_synthetic"}
    assert {job.dataset for job in kept if job.parent_only} <= {"imagenet_synthetic"}
    assert [j.key for j in select(jobs, ["dataset=cifar100_synthetic"])] == [j.key for j in kept]
    with pytest.raises(SpecError, match="no cell of the spec matches"):
        select(jobs, ["dataset=imagenet"])  # the parents are only there for their fine-tunes
    quick = expand(load_spec(EXPERIMENTS / "quickstart.yaml"), smoke=True)
    assert len(select(quick, ["dataset=digits"])) == len(quick)


# ------------------------------------------------------------------------ recipe sweeps


SWEEP = {"recipe.lr": ["5e-4", 1e-3], "recipe.weight_decay": [0.05, 0.1]}


def test_sweep_crosses_every_value_combination_with_the_cells() -> None:
    plain = expand(spec(methods=["default", "mpvg"], seeds=[0, 1]))
    swept = expand(spec(methods=["default", "mpvg"], seeds=[0, 1], sweep=SWEEP))
    assert len(plain) == 4 and len(swept) == 4 * 2 * 2
    assert len({j.key for j in swept}) == len(swept)  # each value is in its job's config and key
    seen = {(j.cell, j.config.recipe.lr, j.config.recipe.weight_decay) for j in swept}
    assert seen == {(j.cell, lr, wd) for j in plain for lr in (5e-4, 1e-3) for wd in (0.05, 0.1)}
    # everything but the swept fields is the cell's usual recipe
    base = plain[0].config.recipe
    for job in swept:
        assert job.config.recipe.model_copy(update={"lr": base.lr, "weight_decay": base.weight_decay}) == base


def test_a_sweep_value_equal_to_the_recipe_is_the_unswept_job() -> None:
    default_lr = expand(spec())[0].config.recipe.lr
    jobs = expand(spec(sweep={"recipe.lr": [default_lr, 2 * default_lr]}))
    assert jobs[0].key == expand(spec())[0].key and jobs[1].key != jobs[0].key


def test_sweep_respects_include_exclude_and_leaves_parents_alone() -> None:
    jobs = expand(spec(methods=["default", "mpvg"], sweep={"recipe.lr": [1e-3, 2e-3]},
                       include=[{"model": "deit_tiny", "method": "mpvg", "seed": 7}],
                       exclude=[{"method": "default", "seed": 0}]))
    assert sorted((j.method_label, j.seed, j.config.recipe.lr) for j in jobs) == [
        ("mpvg", 0, 1e-3), ("mpvg", 0, 2e-3), ("mpvg", 7, 1e-3), ("mpvg", 7, 2e-3)]
    # a fine-tune's parent takes no sweep value: both swept fine-tunes start from one run
    tuned = expand(spec(datasets=["cifar100"], model_overrides={"deit_tiny": {"img_size": 224}},
                        init_from={"dataset": "imagenet"}, sweep={"recipe.lr": [1e-3, 2e-3]}))
    parents = [j for j in tuned if j.parent_only]
    assert len(parents) == 1 and len(tuned) == 3
    assert {j.depends_on for j in tuned if not j.parent_only} == {parents[0].key}


def test_only_selects_along_a_sweep_axis() -> None:
    jobs = expand(spec(methods=["default", "mpvg"], sweep=SWEEP))
    picked = select(jobs, ["recipe.lr=1e-3"])
    assert len(picked) == 4 and {j.config.recipe.lr for j in picked} == {1e-3}
    picked = select(jobs, ["recipe.lr=0.001,recipe.weight_decay=0.1|0.05,method=mpvg"])
    assert {(j.method_label, j.config.recipe.lr) for j in picked} == {("mpvg", 1e-3)} and len(picked) == 2
    assert sweep_text(picked[0], "recipe.lr") == "0.001"
    for bad, words in (("recipe.lr=fast", "valid number"), ("recipe.lrr=1", "unknown recipe field"),
                       ("lr=1e-3", "AXIS one of")):
        with pytest.raises(SpecError, match=words):
            select(jobs, [bad])
    with pytest.raises(SpecError, match="no cell of the spec matches"):
        select(jobs, ["recipe.lr=3e-3"])


def test_sweep_counts_toward_the_job_limit() -> None:
    with pytest.raises(SpecError, match="sweep: the axes multiply"):
        cells_of(spec(seeds=list(range(100)), sweep={"recipe.epochs": list(range(1, 1002))}))
