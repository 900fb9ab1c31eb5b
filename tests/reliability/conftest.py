"""Fixtures of the bad-input corpus: each case's environment, and two small model packages with untrained weights
(no training: the corpus only needs models that load, and a prediction that starts where it should not)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.corpus import Env


@pytest.fixture
def env(tmp_path: Path, request: pytest.FixtureRequest) -> Env:
    """The case's own ``tmp_path`` and, on demand, the session fixtures."""
    return Env(tmp_path, request)


@pytest.fixture(scope="session")
def untrained_segmentation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder of a 3D, one-channel, three-label U-Net with random weights (only read by the corpus)."""
    from tests.helpers import trained_segmentation, write_package
    from vesalius.inference.model import build_trained_network

    trained = trained_segmentation(
        patch_size=[8, 8, 8],
        spacing=[1.0, 1.0, 2.0],
        strides=[[1, 1, 1], [2, 2, 2]],
        kernels=[[3, 3, 3]] * 2,
        features=[4, 8],
    )
    package = write_package(tmp_path_factory.mktemp("seg_model") / "fold_0", trained, {"train": [], "val": []})
    package.save_checkpoint("final", {"model": build_trained_network(trained).state_dict()})
    return package.root


@pytest.fixture(scope="session")
def untrained_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder of a 2D tutorial CNN (32 x 32 grey inputs, absent/present) with random weights."""
    from tests.helpers import trained_classification, write_package
    from vesalius.inference.model import build_trained_network

    trained = trained_classification({0: "absent", 1: "present"}, side=32)
    package = write_package(tmp_path_factory.mktemp("cls_model") / "fold_0", trained, {"train": [], "val": []})
    package.save_checkpoint("final", {"model": build_trained_network(trained).state_dict()})
    return package.root


@pytest.fixture(scope="session")
def untrained_segmentation_package(untrained_segmentation: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``untrained_segmentation`` exported as a package (``vesalius export``), to break."""
    from vesalius.deploy.export import export_model

    return export_model(untrained_segmentation, tmp_path_factory.mktemp("package") / "seg.vpkg")
