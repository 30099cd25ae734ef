"""Job keys are the identity of stored results: they must never drift.

``tests/data/job_keys_v1.json`` holds the keys every shipped spec expanded to (plain and
``--smoke``) before methods became typed objects and before any post-v1 field existed. A change
that alters one of them would orphan every stored result of that cell; a change to a cell's
recipe (a real change of the run) updates the file on purpose, in the same commit. Specs added
later (table3, table4: dense prediction) are pinned from the commit that added them.

The ``:smoke`` keys were re-pinned once, on purpose (issue 19): smoke cells moved from the
``synthetic`` tensors to real-format stand-ins (``imagenet_synthetic``, ``cifar100_synthetic``),
which is a change of the smoke run's dataset; Tables 3-4's smoke fine-tunes changed with their
DeiT-Ti parents' keys. No non-smoke key changed in that commit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpvgbench.config import Recipe, TrainConfig, config_key, config_payload
from mpvgbench.matrix import expand
from mpvgbench.methods import PRESETS
from mpvgbench.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
PINNED: dict[str, list[str]] = json.loads((ROOT / "tests" / "data" / "job_keys_v1.json").read_text())


@pytest.mark.parametrize("name", sorted(PINNED))
def test_shipped_spec_keys_are_pinned(name: str) -> None:
    spec_file, _, smoke = name.partition(":")
    jobs = expand(load_spec(ROOT / "experiments" / spec_file), smoke=bool(smoke))
    assert [job.key for job in jobs] == PINNED[name]


def test_payload_is_the_sorted_compact_dump() -> None:
    config = TrainConfig(model="deit_tiny", method="mpvg", dataset="imagenet", img_size=224,
                         num_classes=1000, seed=3, recipe=Recipe(lr=1e-05, randaugment=None))
    data = config.model_dump(mode="json")
    for name in ("param_groups", "decay_all_params", "nesterov", "max_iters", "adapter_last_ln"):  # post-v1 recipe fields at default
        del data["recipe"][name]
    del data["loader"]  # post-v1 config field at its default ("timm")
    dumped = json.dumps(data, sort_keys=True, separators=(",", ":"))
    assert config_payload(config) == dumped


def test_a_field_added_after_v1_changes_no_key_at_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """A knob added later (here: simulated by pretending v1 lacked ``ema``) is left out of the
    hash while it holds its default, and enters it once set."""
    import mpvgbench.config as config_module

    base = TrainConfig(model="vit_micro", method=PRESETS["pvg"], dataset="digits", img_size=8, num_classes=10)
    monkeypatch.setattr(config_module, "_V1_RECIPE_FIELDS", config_module._V1_RECIPE_FIELDS - {"ema"})
    config_module._recipe_json.cache_clear()
    try:
        assert '"ema":' not in config_payload(base)
        changed = base.model_copy(update={"recipe": base.recipe.model_copy(update={"ema": True})})
        assert '"ema":true' in config_payload(changed)
        assert config_key(changed) != config_key(base)
    finally:
        config_module._recipe_json.cache_clear()


def test_method_is_a_typed_object_and_round_trips() -> None:
    config = TrainConfig(model="vit_micro", method="mpvg[last_ln_pe=2]", dataset="digits", img_size=8,
                         num_classes=10)
    assert config.method == PRESETS["mpvg"].__class__(pool="avg", layerwise_from=1, last_ln_pe=2)
    again = TrainConfig.model_validate_json(config.model_dump_json())
    assert again == config and again.key() == config.key()


def test_param_groups_enter_the_key_when_set() -> None:
    from mpvgbench.config import ParamGroup

    base = TrainConfig(model="vit_micro", method="pvg", dataset="digits", img_size=8, num_classes=10)
    grouped = base.model_copy(update={"recipe": base.recipe.model_copy(
        update={"param_groups": (ParamGroup(match=("head.*",), lr_scale=1.0),)})})
    assert '"param_groups":[{"lr_scale":1.0,"match":["head.*"]}]' in config_payload(grouped)
    assert config_key(grouped) != config_key(base)


def test_dense_open_question_fields_keep_todays_keys_at_their_default() -> None:
    config = TrainConfig(model="deit_tiny", method="mpvg", dataset="coco", img_size=1024, num_classes=80,
                         recipe=Recipe(batch_size=8))
    assert '"adapter_last_ln"' not in config_payload(config)
    applied = config.model_copy(update={"recipe": config.recipe.model_copy(update={"adapter_last_ln": "apply"})})
    assert '"adapter_last_ln":"apply"' in config_payload(applied) and config_key(applied) != config_key(config)
