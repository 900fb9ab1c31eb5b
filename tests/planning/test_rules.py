"""One test per planning rule (vesalius/planning/rules.json), plus the plan of a synthetic data set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vesalius.data.dataset import Dataset
from vesalius.data.importers import import_dataset
from vesalius.data.synthetic import write_segmentation_dataset
from vesalius.planning.fingerprint import Fingerprint
from vesalius.planning.plan import TrainingSuggestion
from vesalius.planning.planner import make_plan, plan_dataset
from vesalius.planning.rules import (
    features_per_stage,
    iterations_needed,
    load_rules,
    mirror_axes,
    network_family,
    network_stem,
    normalization,
    patch_and_batch,
    seconds_per_iteration,
    target_spacing,
    topology,
    training_defaults,
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


def test_tiny_images_are_not_planned_millions_of_iterations(rules: dict) -> None:
    patch, batch, iterations = patch_and_batch((1, 1), 10, "cpu", 1800, 8, 16, rules)
    assert patch == (8, 8)  # the smallest patch the network can halve
    uncapped = 1800 * rules["devices"]["cpu"]["voxels_per_second"] / (64 * batch)
    assert uncapped > 10 * rules["devices"]["cpu"]["max_iterations"]
    assert iterations == rules["devices"]["cpu"]["max_iterations"]


def test_a_costlier_network_gets_fewer_iterations_and_a_batch_that_keeps_the_minimum(rules: dict) -> None:
    _, batch, iterations = patch_and_batch((40, 56, 40), 208, "cpu", 1800, 8, 16, rules)
    _, batch_full, iterations_full = patch_and_batch((40, 56, 40), 208, "cpu", 1800, 8, 16, rules, 3.0)
    assert batch_full == batch == 10
    step_s = seconds_per_iteration(40 * 56 * 40, 10, "cpu", 16, rules, 3.0)
    assert iterations_full == int(1800 / step_s) < iterations / 2.5
    _, batch_small, iterations_small = patch_and_batch((40, 56, 40), 2000, "cpu", 600, 8, 16, rules, 3.0)
    assert batch_small < 10 and iterations_small >= rules["devices"]["cpu"]["min_iterations"]


def test_a_step_costs_a_fixed_overhead_plus_its_voxels_at_the_throughput(rules: dict) -> None:
    rules["devices"]["cpu"].update({"voxels_per_second": 1e6, "step_overhead_s": 0.03})
    # 6 patches of 48 x 48 = 13824 voxels at 1e6 per second, 16 base features: 0.013824 s, + 0.03
    assert seconds_per_iteration(48 * 48, 6, "cpu", 16, rules) == pytest.approx(0.043824)
    # twice the features or a network that costs 3 times as much: the voxel part grows, the overhead does not
    assert seconds_per_iteration(48 * 48, 6, "cpu", 32, rules) == pytest.approx(0.03 + 2 * 0.013824)
    assert seconds_per_iteration(48 * 48, 6, "cpu", 16, rules, 3.0) == pytest.approx(0.03 + 3 * 0.013824)
    _, _, iterations = patch_and_batch((48, 48), 130, "cpu", 600, 8, 16, rules)
    assert iterations == int(600 / 0.043824)


def test_a_data_set_of_tiny_images_needs_fewer_iterations_than_the_budget_allows(rules: dict) -> None:
    rules["passes_to_converge"] = {"cpu": 400, "cuda": None}
    # 130 images of 48 x 48 seen 6 whole images per step: 400 passes are 400 x 130 / 6 = 8666.7 steps
    assert iterations_needed(130, (48.0, 48.0), (48, 48), 6, "cpu", rules) == 8667
    # a patch a quarter of the image sees a quarter of it per step: 4 times the steps
    assert iterations_needed(130, (96.0, 96.0), (48, 48), 6, "cpu", rules) == 34667
    # never more than the device's cap; GPU plans keep the cap (nnU-Net's fixed schedule)
    assert (
        iterations_needed(10_000, (512.0, 512.0), (48, 48), 2, "cpu", rules)
        == rules["devices"]["cpu"]["max_iterations"]
    )
    assert (
        iterations_needed(130, (48.0, 48.0), (48, 48), 6, "cuda", rules) == rules["devices"]["cuda"]["max_iterations"]
    )


def _square_images_plan(num_cases: int, side: int, budget_s: float):  # type: ignore[no-untyped-def]
    dataset = Dataset("toy", "segmentation", 2, ["CT"], {0: "background", 1: "tumour"}, [], modalities=["CT"])
    fingerprint = Fingerprint(
        spacings=[[1.0, 1.0]] * num_cases,
        shapes_before_crop=[[side, side]] * num_cases,
        shapes_after_crop=[[side, side]] * num_cases,
        intensity=[{"mean": 0.0, "std": 1.0, "percentile_00_5": -1.0, "percentile_99_5": 1.0}],
        class_fraction={"0": 0.9, "1": 0.1},
        crop_shrink=1.0,
        modalities=["CT"],
        num_cases=num_cases,
    )
    return make_plan(fingerprint, dataset, time_budget_s=budget_s).configuration("2d")


def test_the_plan_takes_the_fewer_of_what_the_data_needs_and_the_budget_allows(rules: dict) -> None:
    tiny = _square_images_plan(130, 48, 1800)
    needed = iterations_needed(130, (48.0, 48.0), tuple(tiny.patch_size), tiny.batch_size, "cpu", rules)
    assert tiny.iterations == tiny.iterations_needed == needed
    step_s = seconds_per_iteration(float(np.prod(tiny.patch_size)), tiny.batch_size, "cpu", 16, rules)
    assert tiny.expected_training_s == pytest.approx(needed * step_s, abs=0.1)
    assert tiny.expected_training_s < 1800  # the data set needs less than its 30 minutes
    # a longer budget changes neither what the data needs nor the plan's iterations
    assert _square_images_plan(130, 48, 7200).iterations == needed
    large = _square_images_plan(138, 512, 1800)
    assert large.iterations < large.iterations_needed  # the budget, not the data, sets the iterations
    assert large.expected_training_s > 1800


def test_the_first_stage_is_full_resolution_where_the_rules_list_the_configuration(rules: dict) -> None:
    assert network_stem("cpu", "3d", rules) == {"stem": "full"}
    assert network_stem("cpu", "2d", rules) == {"stem": "strided"}
    assert network_stem("cuda:1", "3d", rules) == {"stem": "strided"}
    custom = load_rules({"full_resolution_stage": {"cpu": [], "cuda": ["3d"]}})
    assert network_stem("cpu", "3d", custom) == {"stem": "strided"}
    assert network_stem("cuda", "3d", custom) == {"stem": "full"}


def test_cpu_plans_suggest_adamw_with_cosine_decay_and_gpu_plans_sgd_with_poly(rules: dict) -> None:
    assert training_defaults("cpu", rules) == {"optimizer": "adamw", "schedule": "cosine"}
    assert training_defaults("cuda:0", rules) == {"optimizer": "sgd", "schedule": "poly"}


def test_plans_default_to_the_residual_unet_unless_the_rules_name_another_family(rules: dict) -> None:
    assert {network_family(d, k, rules) for d in ("cpu", "cuda:0") for k in ("2d", "3d")} == {"resunet"}
    custom = load_rules({"network": {"cpu": {"2d": "attention", "3d": "resunet"}, "cuda": {"2d": "x", "3d": "resenc"}}})
    assert network_family("cpu", "2d", custom) == "attention" and network_family("cuda", "3d", custom) == "resenc"


def test_memory_caps_the_batch(rules: dict) -> None:
    _, batch_big, _ = patch_and_batch((64, 64), 10000, "cuda", 40000, 100, 32, rules)
    _, batch_small, _ = patch_and_batch((64, 64), 10000, "cuda", 40000, 0.05, 32, rules)
    assert batch_small < batch_big


def _pair_centroids(offsets: np.ndarray, seed: int = 0) -> list[dict[str, list[float]]]:
    """Per case, classes ``"2"`` and ``"10"`` with ``centroid_2 - centroid_10 = offsets[i]`` (key order varies)."""
    rng = np.random.default_rng(seed)
    cases = []
    for i, offset in enumerate(offsets):
        base = rng.uniform(10, 30, len(offset))
        pair = [("2", (base + offset).tolist()), ("10", base.tolist())]
        cases.append(dict(pair if i % 2 else pair[::-1]))
    return cases


def test_mirroring_skips_axes_along_which_two_classes_keep_their_order(rules: dict) -> None:
    n = 10
    offsets = np.stack([np.full(n, 3.0), np.full(n, 0.2), np.full(n, -4.0)], axis=1)
    offsets[0, 0] = -3.0  # one case in ten the other way round: 90 % still counts as consistent
    # axis 1: always the same sign but within half a voxel, which is no fixed order
    assert mirror_axes(_pair_centroids(offsets), 3, rules) == (1,)


def test_mirroring_keeps_axes_along_which_the_classes_lie_either_way(rules: dict) -> None:
    rng = np.random.default_rng(1)
    offsets = np.stack([rng.permutation(np.repeat([-3.0, 3.0], 20)) for _ in range(3)], axis=1)  # half each way
    assert mirror_axes(_pair_centroids(offsets), 3, rules) == (0, 1, 2)


def test_a_single_class_or_no_centroids_mirrors_every_axis(rules: dict) -> None:
    single = [{"1": [10.0 + i, 20.0, 5.0]} for i in range(20)]
    assert mirror_axes(single, 3, rules) == (0, 1, 2)
    assert mirror_axes([], 2, rules) == (0, 1)


def test_too_few_cases_with_both_classes_exclude_no_axis(rules: dict) -> None:
    few = rules["mirror_min_cases"] - 1
    centroids = _pair_centroids(np.full((few, 2), 3.0)) + [{"2": [1.0, 1.0]}] * 20
    assert mirror_axes(centroids, 2, rules) == (0, 1)
    assert mirror_axes(_pair_centroids(np.full((few + 1, 2), 3.0)), 2, rules) == ()


@pytest.mark.parametrize(
    ("spacing", "axes_3d", "axes_2d"), [((1.0, 1.0, 3.0), [0, 2], [0]), ((3.0, 1.0, 1.0), [0, 1], [0])]
)
def test_the_2d_configuration_gets_the_in_plane_mirror_axes(
    spacing: tuple[float, ...], axes_3d: list[int], axes_2d: list[int]
) -> None:
    n = 8
    offsets = np.zeros((n, 3))
    offsets[:, 1 if spacing[2] > 1 else 2] = 5.0  # one in-plane axis in a fixed order
    dataset = Dataset("toy", "segmentation", 3, ["MRI"], {0: "background", 1: "a", 2: "b"}, [], modalities=["MRI"])
    fingerprint = Fingerprint(
        spacings=[list(spacing)] * n,
        shapes_before_crop=[[40, 40, 40]] * n,
        shapes_after_crop=[[40, 40, 40]] * n,
        intensity=[{"mean": 0.0, "std": 1.0}],
        class_fraction={"0": 0.9, "1": 0.05, "2": 0.05},
        crop_shrink=1.0,
        modalities=["MRI"],
        num_cases=n,
        class_centroids=[{"1": c["2"], "2": c["10"]} for c in _pair_centroids(offsets)],
    )
    plan = make_plan(fingerprint, dataset)
    assert plan.configuration("2d").slice_axis == int(np.argmax(spacing))
    assert list(plan.configuration("3d").mirror_axes) == axes_3d
    assert list(plan.configuration("2d").mirror_axes) == axes_2d


def test_plan_of_a_synthetic_data_set_has_mirror_axes_and_refreshes_an_old_fingerprint(tmp_path: Path) -> None:
    source = write_segmentation_dataset(tmp_path / "phantom", num_cases=6, seed=3)
    workspace = tmp_path / "ws"
    import_dataset(source, "phantom", workspace=workspace)
    plan, _ = plan_dataset("phantom", workspace, workers=1)
    # lesions lie anywhere inside the organ: no fixed order, every axis may be mirrored
    assert plan.configuration("3d").mirror_axes == (0, 1, 2)
    assert plan.configuration("2d").mirror_axes == (0, 1)
    assert plan.configuration("3d").stem == "full" and plan.configuration("2d").stem == "strided"
    assert plan.training == TrainingSuggestion("adamw", "cosine")  # planned for the CPU

    fp_path = workspace / "preprocessed" / "phantom" / "fingerprint.json"
    saved = json.loads(fp_path.read_text())
    assert len(saved["class_centroids"]) == 6 and all("1" in c for c in saved["class_centroids"])
    old = {k: v for k, v in saved.items() if k != "class_centroids"}  # written before centroids existed
    assert Fingerprint.from_json(old).class_centroids == []
    fp_path.write_text(json.dumps(old))
    plan_dataset("phantom", workspace, workers=1)
    assert json.loads(fp_path.read_text())["class_centroids"] == saved["class_centroids"]
