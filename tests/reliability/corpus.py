"""The machinery of the bad-input corpus: a case, the tables of cases per command, builders of bad files.

A case is a function that builds its bad input inside ``tmp_path`` and returns a :class:`Bad`: the command line,
what the one error line must name, the inputs whose every file must keep its SHA-256, and the outputs that must
not come into being. :func:`assert_refused` runs it through ``vesalius.cli.main`` and checks all of that.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import label_volume, volume, write_msd
from vesalius.cli import main
from vesalius.io import Geometry, Image, write_image

# ``file: problem. Remedy.``: after the problem, a sentence that starts with a capital (or a quoted command/option).
REMEDY = re.compile(r"\. [A-Z'\"`-][^\n]*\.$")


@dataclass
class Bad:
    """One bad input: the command line and what its refusal must respect."""

    args: list[str]
    # What the error line must name (substrings): the file concerned, or for an option value the value as given
    # (enumerations: 'int8') or the option (numbers, ambiguous alone: '--lr').
    names: tuple[str, ...]
    inputs: tuple[Path, ...]  # every file under these keeps its SHA-256 and no file appears or disappears
    absent: tuple[Path, ...] = field(default_factory=tuple)  # outputs the command must not create
    listed: tuple[str, ...] = field(default_factory=tuple)  # what stdout must still show (the good part of the input)


@dataclass
class Env:
    """What a case builds with: its own ``tmp_path`` and the session fixtures (fetched on first use)."""

    tmp: Path
    request: pytest.FixtureRequest

    def fixture(self, name: str) -> Any:
        return self.request.getfixturevalue(name)


Setup = Callable[[Env], Bad]
TABLES: dict[str, dict[str, Setup]] = {}


def case(command: str, case_id: str) -> Callable[[Setup], Setup]:
    """Register a case under ``command`` with the id ``case_id`` (which says what the bad input is)."""

    def register(setup: Setup) -> Setup:
        table = TABLES.setdefault(command, {})
        assert case_id not in table, f"duplicate case id {command}/{case_id}"
        table[case_id] = setup
        return setup

    return register


def table(command: str) -> dict[str, Any]:
    """``pytest.mark.parametrize`` arguments for the cases of ``command``."""
    cases = TABLES[command]
    return {"argvalues": list(cases.values()), "ids": list(cases)}


def hashes(paths: tuple[Path, ...]) -> dict[str, str]:
    """SHA-256 of every file under ``paths`` (a file counts as itself), keyed by its path."""
    result = {}
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
        for p in files:
            result[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return result


def assert_refused(bad: Bad, capsys: pytest.CaptureFixture[str]) -> None:
    """Run ``bad`` and check: exit code 2, one ``error:`` line naming the file/option with a remedy, no traceback,
    inputs unchanged, nothing written where the refusal should come first. Every failure is listed at once."""
    capsys.readouterr()
    before = hashes(bad.inputs)
    code = main(bad.args)
    captured = capsys.readouterr()
    print(f"stderr: {captured.err!r}")  # shown by pytest -rP: what each refusal reads like
    problems = []
    if code != 2:
        problems.append(f"exit code {code}, not 2")
    if "Traceback" in captured.err or "Traceback" in captured.out:
        problems.append("a traceback was printed")
    lines = captured.err.strip().splitlines()
    if len(lines) != 1:
        problems.append(f"{len(lines)} lines on stderr, not 1")
    line = lines[-1] if lines else ""
    if not line.startswith("error: "):
        problems.append("the error line does not start with 'error: '")
    missing = [name for name in bad.names if name not in line]
    if missing:
        problems.append(f"the error line does not name {missing}")
    if not REMEDY.search(line):
        problems.append("the error line has no remedy sentence")
    after = hashes(bad.inputs)
    if after != before:
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        problems.append(f"inputs changed: {changed[:5]}")
    unlisted = [text for text in bad.listed if text not in captured.out]
    if unlisted:
        problems.append(f"stdout does not show {unlisted}")
    written = [str(p) for p in bad.absent if p.exists()]
    if written:
        problems.append(f"written before refusing: {written}")
    assert not problems, "; ".join(problems) + f"\nargs: {bad.args}\nstderr: {captured.err!r}"


# ---------------------------------------------------------------------------------------------------------------
# Builders of inputs, good and bad


def garbage(path: Path, size: int = 4096) -> Path:
    """Random bytes under a real-looking name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(7).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def truncated(path: Path) -> Path:
    """Cut ``path`` to half its size."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def empty(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def nrrd(path: Path, fields: list[str], data: bytes = bytes(120)) -> Path:
    """A NRRD file written by hand (uint8, raw): ``fields`` after the magic line, then the data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ["NRRD0004", "type: uint8", "encoding: raw", *fields]
    path.write_bytes(("\n".join(header) + "\n\n").encode() + data)
    return path


ZERO_SPACING = [
    "dimension: 3",
    "sizes: 4 5 6",
    "space: left-posterior-superior",
    "space directions: (0,0,0) (0,1,0) (0,0,1)",
    "space origin: (0,0,0)",
]
NEGATIVE_SPACING = ["dimension: 3", "sizes: 4 5 6", "spacings: -1 1 2"]
HUGE_HEADER = ["dimension: 3", "sizes: 1000 1000 1000", "spacings: 1 1 1"]  # 10^9 voxels claimed, 120 bytes given


def image3d(path: Path, seed: int = 0) -> Path:
    write_image(volume(seed), path)
    return path


def label3d(path: Path, seed: int = 0) -> Path:
    write_image(label_volume(seed), path)
    return path


def png(path: Path, seed: int = 0, shape: tuple[int, int] = (6, 7), mask: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 2, size=(1, *shape), dtype=np.uint8) * 255 if mask else rng.integers(0, 256, (1, *shape))
    write_image(Image(array.astype(np.uint8), Geometry.default(2)), path)
    return path


def with_nan(path: Path, seed: int = 0) -> Path:
    image = volume(seed)
    array = image.array.copy()
    array[0, 1:3, 2:4, 1:3] = np.nan
    write_image(image.with_array(array), path)
    return path


def msd(env: Env, name: str = "src") -> Path:
    """A tiny MSD source (3 cases)."""
    return write_msd(env.tmp / name)


def edit_json(path: Path, edit: Callable[[Any], Any]) -> Path:
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    return path


def imported(env: Env, name: str = "tiny") -> Path:
    """A workspace holding the tiny MSD source imported as ``name``."""
    import vesalius

    ws = env.tmp / "ws"
    vesalius.import_dataset(msd(env), name, workspace=ws)
    return ws


def planned_copy(env: Env) -> Path:
    """A copy of the session's planned and preprocessed phantom workspace (data set ``ph``), without runs."""
    from tests.helpers import copy_workspace

    return copy_workspace(env.fixture("planned"), env.tmp)


def model_copy(env: Env, fixture: str = "untrained_segmentation") -> Path:
    """A copy of a session model package, to break."""
    return shutil.copytree(env.fixture(fixture), env.tmp / "model")
