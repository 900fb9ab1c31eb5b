"""Training settings: resolved from the plan, bad values refused, optimizer and schedule."""

from __future__ import annotations

import pytest

from tests.helpers import segmentation_plan
from vesalius.errors import VesaliusError
from vesalius.training import SegmentationSettings


def test_training_config_resolves_from_plan_and_rejects_bad_values():
    plan = segmentation_plan({"3d": {"batch_size": 4, "patch_size": [8, 8, 8], "iterations": 1000}}, time_budget_s=600)
    cfg = SegmentationSettings("x").resolve(plan)
    assert (cfg.epochs, cfg.time_budget_s, cfg.batch_size, cfg.patch_size) == (4, 600.0, 4, (8, 8, 8))
    assert cfg.lr == 1e-2 and SegmentationSettings("x", optimizer="adamw").resolve(plan).lr == 2e-3
    explicit = SegmentationSettings("x", epochs=2, iterations_per_epoch=10).resolve(plan)
    assert explicit.time_budget_s is None and explicit.epochs * explicit.iterations_per_epoch == 20
    assert SegmentationSettings.from_dict(cfg.to_dict()) == cfg
    for bad in ({"optimizer": "lbfgs"}, {"fold": 7.5}, {"epochs": 0}, {"precision": "int8"}, {"lr": -1.0}):
        with pytest.raises(VesaliusError):
            SegmentationSettings("x", **bad)
    with pytest.raises(VesaliusError, match="no '2d'"):
        SegmentationSettings("x", config="2d").resolve(plan)


def test_optimizer_and_schedule_come_from_the_plan_unless_given():
    configurations = {"3d": {"batch_size": 4, "patch_size": [8, 8, 8], "iterations": 1000}}
    old = SegmentationSettings("x").resolve(segmentation_plan(configurations))  # no suggestion: nnU-Net's SGD + poly
    assert (old.optimizer, old.schedule, old.lr, old.weight_decay) == ("sgd", "poly", 1e-2, 3e-5)
    plan = segmentation_plan(configurations, training={"optimizer": "adamw", "schedule": "cosine"})
    cpu = SegmentationSettings("x").resolve(plan)
    assert (cpu.optimizer, cpu.schedule, cpu.lr, cpu.weight_decay) == ("adamw", "cosine", 2e-3, 1e-2)
    given = SegmentationSettings("x", optimizer="sgd", schedule="poly").resolve(plan)
    assert (given.optimizer, given.schedule, given.lr) == ("sgd", "poly", 1e-2)
    assert SegmentationSettings.from_dict(cpu.to_dict()).resolve(plan) == cpu
