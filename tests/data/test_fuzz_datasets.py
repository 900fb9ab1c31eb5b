"""Property tests: random ``dataset.json`` structures, CSV files and npz archives give a data set or a
:class:`VesaliusError`, never any other exception (derandomized, so CI sees the same examples every run)."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from vesalius.data.dataset import Dataset
from vesalius.data.importers import import_dataset
from vesalius.errors import VesaliusError

FUZZ = settings(max_examples=40, deadline=None, derandomize=True)

SCALARS = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True) | st.text(max_size=8)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
KEYS = st.sampled_from(
    ["name", "task", "spatial_dims", "channels", "labels", "cases", "source", "modalities", "target_type"]
)
CASE = st.dictionaries(st.sampled_from(["case_id", "images", "label", "target", "split", "source"]), JSON, max_size=6)
VALID = {
    "vesalius_dataset": 1,
    "name": "x",
    "task": "segmentation",
    "spatial_dims": 3,
    "channels": ["CT"],
    "labels": {"0": "background"},
    "cases": [{"case_id": "a", "images": ["imagesTr/a_0000.nii.gz"], "label": "labelsTr/a.nii.gz"}],
}


def _accepts_or_refuses(call) -> None:  # type: ignore[no-untyped-def]
    try:
        call()
    except VesaliusError as e:
        assert "\n" not in e.one_line()


@settings(FUZZ)
@given(changes=st.dictionaries(KEYS, JSON, max_size=3), cases=st.none() | st.lists(CASE, max_size=2))
def test_from_json_with_random_values(changes, cases):
    data = VALID | changes | ({"cases": cases} if cases is not None else {})
    _accepts_or_refuses(lambda: Dataset.from_json(data))


@settings(FUZZ)
@given(document=JSON)
def test_load_random_documents(document):
    with tempfile.TemporaryDirectory() as folder:
        text = json.dumps(document if not isinstance(document, dict) else {"vesalius_dataset": 1, **document})
        (Path(folder) / "dataset.json").write_text(text)
        _accepts_or_refuses(lambda: Dataset.load(folder))


@settings(FUZZ)
@given(data=st.binary(max_size=200))
def test_load_random_bytes(data):
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "dataset.json").write_bytes(data)
        _accepts_or_refuses(lambda: Dataset.load(folder))


CELL = st.sampled_from(["a.png", "pics/a.png", "../a.png", "/a.png", "", "x/y", "nevus", "0", "1", "../../z", " "])


@settings(FUZZ)
@given(
    header=st.lists(st.sampled_from(["image", "label", "case_id", "split", "path", "class", "other"]), max_size=4),
    rows=st.lists(st.lists(CELL | st.text(max_size=5), max_size=5), max_size=4),
    raw=st.none() | st.binary(max_size=60),
)
def test_csv_importer(header, rows, raw):
    from vesalius.io import Geometry, Image, write_image

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_image(Image(np.zeros((1, 4, 4), np.uint8), Geometry.default(2)), root / "src" / "a.png")
        write_image(Image(np.ones((1, 4, 4), np.uint8), Geometry.default(2)), root / "src" / "pics" / "a.png")
        path = root / "src" / "t.csv"
        if raw is not None:
            path.write_bytes(raw)
        else:
            buffer = io.StringIO()
            for line in [header, *rows]:
                buffer.write(",".join(line) + "\n")
            path.write_text(buffer.getvalue())
        _accepts_or_refuses(lambda: import_dataset(path, "c", workspace=root / "ws"))
        outside = {p.relative_to(root).parts[0] for p in root.rglob("*")}
        assert outside <= {"src", "ws"}


ARRAYS = st.builds(
    lambda shape, kind: np.zeros(shape, dtype=kind),
    st.lists(st.integers(0, 4), max_size=5).map(tuple),
    st.sampled_from([np.uint8, np.float32, np.float16, np.bool_, np.int64, np.complex64, "U2"]),
)


@settings(FUZZ)
@given(
    arrays=st.dictionaries(
        st.sampled_from(["train_images", "train_labels", "val_images", "val_labels", "x"]), ARRAYS, max_size=4
    ),
    garbage=st.none() | st.binary(max_size=80),
)
def test_npz_importer(arrays, garbage):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        path = root / "m.npz"
        if garbage is not None:
            path.write_bytes(garbage)
        else:
            np.savez(path, **arrays)
        _accepts_or_refuses(lambda: import_dataset(path, "n", workspace=root / "ws"))
