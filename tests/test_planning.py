"""One test per planning rule (vesalius/planning/rules.json), plus the plan of a synthetic data set."""

from __future__ import annotations

import numpy as np
import pytest

from vesalius.planning.rules import (
    features_per_stage,
    load_rules,
    normalization,
    patch_and_batch,
    target_spacing,
    topology,
)


@pytest.fixture
def rules() -> dict:
    return load_rules()


def test_target_spacing_is_the_median_for_isotropic_data(rules: dict) -> None:
    spacings = np.array([[1.0, 1.0, 1.0], [0.8, 0.9, 1.2], [1.2, 1.1, 0.8]])
    shapes = np.full((3, 3), 50)
    assert target_spacing(spacings, shapes, rules) == pytest.approx((1.0, 1.0, 1.0))


def test_target_spacing_takes_a_low_percentile_on_the_thick_slice_axis(rules: dict) -> None:
    z = np.array([5.0, 5.0, 5.0, 3.0, 4.0, 6.0, 5.0, 2.5, 5.0, 5.0])
    spacings = np.stack([np.full(10, 0.7), np.full(10, 0.7), z], axis=1)
    shapes = np.tile([512, 512, 40], (10, 1))
    got = target_spacing(spacings, shapes, rules)
    assert got[:2] == pytest.approx((0.7, 0.7))
    assert got[2] == pytest.approx(np.percentile(z, 10))  # 10th percentile, not the median 5.0


def test_target_spacing_keeps_the_median_when_the_thick_axis_has_many_voxels(rules: dict) -> None:
    spacings = np.tile([0.7, 0.7, 5.0], (5, 1)) * np.array([[1, 1, 1], [1, 1, 0.5], [1, 1, 1], [1, 1, 1], [1, 1, 1]])
    shapes = np.tile([100, 100, 400], (5, 1))  # anisotropic spacing but not anisotropic in voxels
    assert target_spacing(spacings, shapes, rules)[2] == pytest.approx(5.0)


def test_ct_normalisation_clips_to_foreground_percentiles(rules: dict) -> None:
    stats = {"mean": 40.0, "std": 20.0, "percentile_00_5": -100.0, "percentile_99_5": 200.0}
    norm = normalization("CT", 1.0, stats, rules)
    assert norm == {"scheme": "ct", "clip": [-100.0, 200.0], "mean": 40.0, "std": 20.0}


def test_mri_normalisation_uses_the_mask_only_when_cropping_shrank_the_images(rules: dict) -> None:
    assert normalization("MRI", 0.5, {}, rules) == {"scheme": "zscore", "use_nonzero_mask": True}
    assert normalization("T1c", 0.9, {}, rules) == {"scheme": "zscore", "use_nonzero_mask": False}


def test_pictures_are_scaled(rules: dict) -> None:
    assert normalization("RGB", 1.0, {}, rules)["scheme"] == "scale"
    assert normalization("8bit", 1.0, {}, rules)["high"] == 255.0


def test_topology_pools_isotropic_axes_until_the_minimum_feature_map(rules: dict) -> None:
    strides, kernels, patch = topology((40, 56, 40), (1.0, 1.0, 1.0), rules, "3d")
    # 40 -> 20 -> 10 -> 5 (stops: 5 < 2*4); 56 -> 28 -> 14 -> 7
    assert strides == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert kernels == [[3, 3, 3]] * 4
    assert patch == (40, 56, 40)


def test_topology_does_not_pool_a_thick_axis_early_and_uses_1_kernels_there(rules: dict) -> None:
    strides, kernels, patch = topology((160, 160, 20), (0.8, 0.8, 4.0), rules, "3d")
    assert strides[1] == [2, 2, 1] and kernels[0] == [3, 3, 1]
    # after two in-plane poolings the spacing is 3.2 mm: within 2x of 4.0, so z is pooled and gets 3-kernels
    assert [2, 2, 2] in strides and kernels[-1] == [3, 3, 3]
    total = np.prod(np.asarray(strides), axis=0)
    assert all(p % t == 0 for p, t in zip(patch, total, strict=True))


def test_topology_rounds_the_patch_up_to_a_multiple_of_the_total_stride(rules: dict) -> None:
    strides, _, patch = topology((37, 50, 35), (1.0, 1.0, 1.0), rules, "3d")
    assert patch == (40, 56, 40)
    assert len(strides) <= rules["max_stages"]["3d"]


def test_features_double_per_stage_and_are_capped(rules: dict) -> None:
    assert features_per_stage(4, "cpu", "3d", rules) == [16, 32, 64, 128]
    assert features_per_stage(6, "cuda", "3d", rules) == [32, 64, 128, 256, 320, 320]


def test_patch_and_batch_fit_the_time_budget(rules: dict) -> None:
    patch, batch, iterations = patch_and_batch((40, 56, 40), 208, "cpu", 1800, 8, 16, rules)
    assert patch == (40, 56, 40)
    assert batch == 10  # 5% of 208 cases caps the batch the budget would allow
    assert iterations >= rules["devices"]["cpu"]["min_iterations"]


def test_a_small_budget_shrinks_the_patch_but_keeps_proportions(rules: dict) -> None:
    patch, batch, iterations = patch_and_batch((200, 200, 100), 50, "cpu", 600, 8, 16, rules)
    assert batch == rules["min_batch"]
    assert (
        np.prod(patch) * batch
        <= 600 * rules["devices"]["cpu"]["voxels_per_second"] / rules["devices"]["cpu"]["min_iterations"]
    )
    assert patch[0] > patch[2]  # still wider in-plane than deep
    assert iterations >= rules["devices"]["cpu"]["min_iterations"] * 0.9


def test_memory_caps_the_batch(rules: dict) -> None:
    _, batch_big, _ = patch_and_batch((64, 64), 10000, "cuda", 40000, 100, 32, rules)
    _, batch_small, _ = patch_and_batch((64, 64), 10000, "cuda", 40000, 0.05, 32, rules)
    assert batch_small < batch_big
