"""Shared fixtures: tiny images and tiny data sets of every source layout, all built inside ``tmp_path``.

Volumes are 6 x 7 x 5 voxels (a different size along each axis, so that a swapped axis cannot go unnoticed),
with anisotropic spacing, a non-zero origin and a non-identity direction. Every data set fixture returns the
folder (or file) it built; tests corrupt them as they need.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from tests.helpers import trained_segmentation, write_package
from vesalius.io import Geometry, Image, write_image

SHAPE = (6, 7, 5)
SPACING = (0.7, 0.8, 2.5)
ORIGIN = (-10.5, 20.25, 30.125)
# Array axis 0 -> +y, axis 1 -> -z, axis 2 -> -x: axis-aligned, permuted and flipped, right-handed.
PERMUTED = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation matrix from angles in degrees about x, then y, then z."""
    a, b, c = np.radians([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


OBLIQUE = rotation(17.0, -23.0, 31.0)
GEOMETRY = Geometry(SPACING, ORIGIN, tuple(PERMUTED.ravel()))


def volume(
    seed: int = 0, dtype: type = np.float32, shape: tuple[int, ...] = SHAPE, geometry: Geometry = GEOMETRY
) -> Image:
    """A single-channel 3D image of random values (floats in [-1000, 1000) or the full integer range)."""
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        array = rng.integers(info.min, info.max, size=(1, *shape), endpoint=True, dtype=dtype)
    else:
        array = (rng.random((1, *shape)) * 2000 - 1000).astype(dtype)
    return Image(array, geometry)


def label_volume(
    seed: int = 0, values: tuple[int, ...] = (0, 1, 2), shape: tuple[int, ...] = SHAPE, geometry: Geometry = GEOMETRY
) -> Image:
    """A uint8 label holding every value of ``values``."""
    rng = np.random.default_rng(seed + 1000)
    array = rng.choice(np.asarray(values, dtype=np.uint8), size=(1, *shape))
    array.flat[: len(values)] = values
    return Image(array, geometry)


def write_msd(root: Path, num_cases: int = 3) -> Path:
    """Medical Segmentation Decathlon layout: dataset.json with a ``training`` list, 3D CT images."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(num_cases):
        name = f"case_{i:02d}.nii.gz"
        write_image(volume(i), root / "imagesTr" / name)
        write_image(label_volume(i), root / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {
        "name": "Tiny",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "liver", "2": "tumour"},
        "numTraining": num_cases,
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root


def write_nnunet(root: Path, num_cases: int = 3) -> Path:
    """nnU-Net v2 raw layout: channel_names, labels name -> value, ``CASE_0000``/``CASE_0001`` files."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(num_cases):
        case = f"case_{i:03d}"
        write_image(volume(10 * i, np.int16), root / "imagesTr" / f"{case}_0000.nii.gz")
        write_image(volume(10 * i + 1, np.int16), root / "imagesTr" / f"{case}_0001.nii.gz")
        write_image(label_volume(i, (0, 1)), root / "labelsTr" / f"{case}.nii.gz")
    meta = {
        "channel_names": {"0": "T1", "1": "T2"},
        "labels": {"background": 0, "tumour": 1},
        "numTraining": num_cases,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root


def write_msd_4d(root: Path, num_cases: int = 2, num_channels: int = 2) -> Path:
    """MSD layout with 4D images (``tensorImageSize`` 4D): the channels are the last axis of each image."""
    import SimpleITK as sitk

    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    direction = np.eye(4)
    direction[:3, :3] = PERMUTED
    training = []
    for i in range(num_cases):
        name = f"brain_{i:02d}.nii.gz"
        rng = np.random.default_rng(i)
        array = (rng.random((*SHAPE, num_channels)) * 1000).astype(np.float32)  # (X, Y, Z, C)
        img = sitk.GetImageFromArray(array.T, isVector=False)  # 4D scalar image, ITK index (x, y, z, c)
        img.SetSpacing((*SPACING, 1.0))
        img.SetOrigin((*ORIGIN, 0.0))
        img.SetDirection(tuple(direction.ravel()))
        sitk.WriteImage(img, str(root / "imagesTr" / name))
        write_image(label_volume(i), root / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {
        "tensorImageSize": "4D",
        "modality": {str(c): name for c, name in enumerate(["FLAIR", "T1w", "T1gd", "T2w"][:num_channels])},
        "labels": {"0": "background", "1": "edema", "2": "tumour"},
        "training": training,
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root


def picture(seed: int, channels: int = 1, shape: tuple[int, int] = (6, 7)) -> Image:
    """A 2D uint8 picture with default geometry, ``(C, X, Y)``."""
    rng = np.random.default_rng(seed)
    return Image(rng.integers(0, 256, size=(channels, *shape), dtype=np.uint8), Geometry.default(2))


def mask_picture(seed: int, shape: tuple[int, int] = (6, 7)) -> Image:
    """A 0/255 mask with both values present."""
    rng = np.random.default_rng(seed + 500)
    array = (rng.random((1, *shape)) > 0.5).astype(np.uint8) * 255
    array.flat[:2] = (0, 255)
    return Image(array, Geometry.default(2))


def write_pairs(root: Path, num_cases: int = 3) -> Path:
    """``images/`` + ``masks/`` of PNGs; masks are 0/255; the label of ``img01`` is ``img01_manual.png``."""
    for i in range(num_cases):
        write_image(picture(i), root / "images" / f"img{i:02d}.png")
        label_name = f"img{i:02d}_manual.png" if i == 1 else f"img{i:02d}.png"
        write_image(mask_picture(i), root / "masks" / label_name)
    return root


def write_classes(root: Path, per_class: int = 2) -> Path:
    """One folder per class (``benign``, ``malignant``) of grey PNGs."""
    for k, name in enumerate(("benign", "malignant")):
        for i in range(per_class):
            write_image(picture(10 * k + i), root / name / f"lesion{i}.png")
    return root


def write_csv(root: Path) -> Path:
    """``labels.csv`` with ``image,label,split`` columns and class names; images in ``pics/``."""
    rows = [("a.png", "nevus", "train"), ("b.png", "melanoma", "train"), ("c.png", "nevus", "val")]
    for i, (name, _, _) in enumerate(rows):
        write_image(picture(i, channels=3), root / "pics" / name)
    lines = ["image,label,split"] + [f"pics/{n},{c},{s}" for n, c, s in rows]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


def file_hashes(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (or of ``root`` itself), by relative path."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def truncate(path: Path, keep: float | int = 0.5) -> None:
    """Cut a file to a fraction of its size (float) or drop its last ``keep`` bytes (negative int)."""
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else len(data) + keep
    path.write_bytes(data[:n])


@pytest.fixture
def make() -> SimpleNamespace:
    """The builders and constants above, for tests (``make.volume(seed)``, ``make.msd(root)``, ...)."""
    return SimpleNamespace(
        volume=volume,
        label=label_volume,
        picture=picture,
        mask=mask_picture,
        msd=write_msd,
        nnunet=write_nnunet,
        msd_4d=write_msd_4d,
        pairs=write_pairs,
        classes=write_classes,
        csv=write_csv,
        truncate=truncate,
        hashes=file_hashes,
        rotation=rotation,
        geometry=GEOMETRY,
        permuted=PERMUTED,
        oblique=OBLIQUE,
        shape=SHAPE,
        spacing=SPACING,
        origin=ORIGIN,
    )


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Nothing is written outside ``tmp_path``: the default workspace lives there, debug mode is off."""
    home = tmp_path / "vesalius_home"
    monkeypatch.setenv("VESALIUS_HOME", str(home))
    monkeypatch.delenv("VESALIUS_DEBUG", raising=False)
    return home


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Small tensors: one thread is as fast, and immune to other processes busy on the same cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return tmp_path / "ws"


@pytest.fixture
def msd_source(tmp_path: Path) -> Path:
    return write_msd(tmp_path / "src_msd")


@pytest.fixture
def nnunet_source(tmp_path: Path) -> Path:
    return write_nnunet(tmp_path / "src_nnunet")


@pytest.fixture
def msd4d_source(tmp_path: Path) -> Path:
    return write_msd_4d(tmp_path / "src_msd4d")


@pytest.fixture
def pairs_source(tmp_path: Path) -> Path:
    return write_pairs(tmp_path / "src_pairs")


@pytest.fixture
def classes_source(tmp_path: Path) -> Path:
    return write_classes(tmp_path / "src_classes")


@pytest.fixture
def csv_source(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "src_csv")


@pytest.fixture
def unchanged() -> Callable[[Path], Callable[[], None]]:
    """``check = unchanged(src)`` hashes every file of ``src``; ``check()`` asserts none changed or appeared."""

    def start(root: Path) -> Callable[[], None]:
        before = file_hashes(root)

        def check() -> None:
            assert file_hashes(root) == before, f"source files under {root} changed"

        return check

    return start


@pytest.fixture(autouse=True)
def _no_internal_errors(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any ``internal error`` of the command-line tool (an exception that is not a user error) fails the test."""
    import vesalius.cli

    seen: list[Exception] = []
    monkeypatch.setattr(vesalius.cli, "report_internal_error", seen.append)
    yield
    assert not seen, f"internal error: {type(seen[0]).__name__}: {seen[0]}"


@pytest.fixture(scope="session")
def planned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace holding a planned and preprocessed 12-case 3D phantom data set ``ph`` (shared: copy to modify)."""
    import vesalius
    from vesalius.data.synthetic import write_segmentation_dataset

    root = tmp_path_factory.mktemp("planned")
    write_segmentation_dataset(root / "src", 12, seed=0)
    ws = root / "ws"
    vesalius.import_dataset(root / "src", "ph", workspace=ws)
    vesalius.plan("ph", workspace=ws)
    vesalius.preprocess("ph", "3d", workspace=ws)
    return ws


@pytest.fixture(scope="session")
def trained(planned: Path):  # type: ignore[no-untyped-def]
    """Fold 0 of ``planned`` trained briefly (60 iterations, a few seconds) and validated."""
    import vesalius

    return vesalius.train("ph", "3d", 0, workspace=planned, epochs=4, iterations_per_epoch=15, val_batches=2, threads=2)


@pytest.fixture(scope="session")
def trained_synthetic(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A tutorial CNN trained briefly (20 epochs, no augmentation) on 64 synthetic 48x48 cases (fold 0)."""
    import torch

    import vesalius
    from vesalius.data.synthetic import make_classification_case

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cls")
    for i in range(64):
        folder = "present" if i % 2 else "absent"
        write_image(make_classification_case(i, i % 2 == 1, shape=(48, 48)), root / "src" / folder / f"c{i:02d}.nii.gz")
    ws = root / "ws"
    vesalius.import_dataset(root / "src", "syn", workspace=ws)
    off = {k: 0.0 for k in ("p_rotation", "p_scaling", "p_noise", "p_blur", "p_brightness", "p_contrast", "p_gamma")}
    return vesalius.train(
        "syn",
        None,
        0,
        ws,
        report=False,
        network="cnn",
        epochs=20,
        lr=3e-3,
        precision="fp32",
        threads=1,
        augmentation=off,
    )


@pytest.fixture(scope="session")
def fake_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace holding a 4-case 3D phantom set and the folder of a short run on it: its settings, a 3-epoch log
    and validation predictions (phantom_001 perfect, phantom_002 with its lesion missed, phantom_003 shifted)."""
    import vesalius
    from vesalius.data.synthetic import write_segmentation_dataset
    from vesalius.io import read_image

    root = tmp_path_factory.mktemp("report")
    write_segmentation_dataset(root / "src", 4, seed=5)
    ws = root / "ws"
    vesalius.import_dataset(root / "src", "ph", workspace=ws)
    run = ws / "runs" / "ph" / "3d" / "fold_0"
    (run / "validation").mkdir(parents=True)
    split = {"train": ["phantom_000"], "val": ["phantom_001", "phantom_002", "phantom_003"]}
    training = {"dataset": "ph", "config": "3d", "fold": 0, "epochs": 3, "lr": 0.01}
    trained = trained_segmentation(spacing=[1.0, 1.0, 2.0], patch_size=[32, 32, 32])
    write_package(run, trained, split, training)
    rows = [
        {"epoch": e, "iteration": 10 * (e + 1), "elapsed_s": e, "lr": 0.01 / (e + 1), "train_loss": 1.0 / (e + 1)}
        | {"val_loss": 1.2 / (e + 1), "dice_organ": 0.3 * e, "dice_lesion": 0.2 * e, "dice_mean": 0.25 * e}
        for e in range(3)
    ]
    with open(run / "log.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for case_id in split["val"]:
        reference = read_image(ws / "datasets" / "ph" / "labelsTr" / f"{case_id}.nii.gz")
        array = reference.array.copy()
        if case_id == "phantom_002":
            array[array == 2] = 1
        if case_id == "phantom_003":
            array = np.roll(array, 2, axis=1)
        write_image(reference.with_array(array), run / "validation" / f"{case_id}.nii.gz")
    return run


CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--enable-unsafe-swiftshader",  # software WebGL2 (Chromium 144+ no longer falls back to it by itself)
    "--disable-background-networking",  # no attempts to reach the internet
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless with software WebGL2, driven by Playwright; skips (saying why) without it."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("Chromium is not installed (as root, 'make setup' installs it with apt-get install chromium)")
    from playwright.sync_api import Error, sync_playwright

    with sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        except Error as e:
            pytest.skip(f"Chromium ({executable}) cannot be launched: {str(e).splitlines()[0]}")
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Folder for test artefacts such as screenshots: ``$VESALIUS_TEST_ARTIFACTS`` or ``build/test-artifacts``."""
    default = Path(__file__).parents[1] / "build" / "test-artifacts"
    folder = Path(os.environ.get("VESALIUS_TEST_ARTIFACTS", default))
    folder.mkdir(parents=True, exist_ok=True)
    return folder
