"""The ``vesalius`` command: help, exit codes, one-line errors naming the file, ``--debug`` tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vesalius.cli import main
from vesalius.data.synthetic import write_segmentation_dataset
from vesalius.errors import VesaliusError
from vesalius.planning.plan import Plan
from vesalius.units import format_duration


def _run_module(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m vesalius ARGS`` in a fresh interpreter (no terminal, so no progress bars)."""
    environment = {**os.environ, "COLUMNS": "200", "PYTHONIOENCODING": "utf-8", **(env or {})}
    environment.pop("VESALIUS_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "vesalius", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        encoding="utf-8",  # not the locale's: ITK may have set the C locale in this process
        timeout=120,
    )


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert "Traceback" not in err
    return lines[0]


def test_help_lists_the_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("import", "verify", "demo"):
        assert command in out


def test_python_m_vesalius_help(tmp_path):
    result = _run_module("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for command in ("import", "verify", "demo"):
        assert command in result.stdout
    assert not list(tmp_path.iterdir()), "--help wrote files"


def test_import_then_verify_clean_then_corrupted(msd_source, workspace, capsys, make):
    assert main(["import", str(msd_source), "tiny", "--workspace", str(workspace)]) == 0
    out = capsys.readouterr().out
    assert "imported 'tiny': 3 cases" in out
    assert (workspace / "datasets" / "tiny" / "dataset.json").is_file()

    assert main(["verify", "tiny", "-w", str(workspace)]) == 0
    assert "tiny: 3 cases, 0 errors, 0 warnings" in capsys.readouterr().out

    assert main(["datasets", "-w", str(workspace)]) == 0
    assert capsys.readouterr().out.split() == ["tiny", "segmentation", "3D", "3", "cases", "msd"]

    copy = workspace / "datasets" / "tiny" / "labelsTr" / "case_02.nii.gz"
    make.truncate(copy, 0.5)
    assert main(["verify", "tiny", "-w", str(workspace)]) == 2
    captured = capsys.readouterr()
    assert f"ERROR   [case_02] {copy}: unreadable: truncated gzip" in captured.out
    assert "tiny: 3 cases, 1 errors, 0 warnings" in captured.out


def test_verify_uses_vesalius_home(msd_source, _isolated_home, capsys):
    assert main(["import", str(msd_source), "home"]) == 0
    assert (_isolated_home / "datasets" / "home" / "dataset.json").is_file()
    assert main(["verify", "home"]) == 0
    capsys.readouterr()


def test_plan_prints_the_iterations_and_what_the_data_set_needs(tmp_path, workspace, capsys):
    source = write_segmentation_dataset(tmp_path / "phantom", num_cases=4, seed=0)
    assert main(["import", str(source), "tiny", "--workspace", str(workspace)]) == 0
    for budget in ("30m", "60s"):
        capsys.readouterr()
        assert main(["plan", "tiny", "-w", str(workspace), "--time-budget", budget]) == 0
        lines = {line.split(":")[0]: line for line in capsys.readouterr().out.splitlines()}
        plan = Plan.load(workspace / "preprocessed" / "tiny" / "plan.json")
        for key, configuration in plan.configurations.items():
            needed, iterations = configuration.iterations_needed, configuration.iterations
            expected = f"~{format_duration(configuration.expected_training_s)} on the planned device"
            if budget == "30m":  # 4 small phantoms need far less than 30 minutes
                assert iterations == needed
                assert lines[key].endswith(
                    f"~{needed} iterations, what the data set needs ({expected}; the budget allows more)"
                )
            else:
                assert iterations < needed
                assert lines[key].endswith(
                    f"~{iterations} iterations in the budget; the data set needs ~{needed} ({expected})"
                )


def test_missing_source_folder(tmp_path, workspace, capsys):
    missing = tmp_path / "no_such_folder"
    assert main(["import", str(missing), "x", "-w", str(workspace)]) == 2
    captured = capsys.readouterr()
    line = _one_error_line(captured.err)
    assert line == f"error: {missing}: source not found. Check the path."
    assert not workspace.exists()


def test_verify_unknown_dataset(workspace, capsys):
    assert main(["verify", "ghost", "-w", str(workspace)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(workspace / "datasets" / "ghost") in line and "no data set 'ghost'" in line


def test_import_of_broken_set(msd_source, workspace, capsys, make):
    broken = msd_source / "imagesTr" / "case_01.nii.gz"
    make.truncate(broken, 0.5)
    assert main(["import", str(msd_source), "broken", "-w", str(workspace)]) == 2
    captured = capsys.readouterr()
    line = _one_error_line(captured.err)
    assert str(broken) in line and "import refused" in line
    assert f"ERROR   [case_01] {broken}: unreadable: truncated gzip" in captured.out  # the full report
    assert not any((workspace / "datasets").iterdir())

    assert main(["import", str(msd_source), "broken", "-w", str(workspace), "--force"]) == 0
    out = capsys.readouterr().out
    assert "imported 'broken': 2 cases" in out and "left out 1 cases" in out


def test_import_name_taken_and_overwrite(msd_source, classes_source, workspace, capsys):
    assert main(["import", str(msd_source), "same", "-w", str(workspace)]) == 0
    assert main(["import", str(classes_source), "same", "-w", str(workspace)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(workspace / "datasets" / "same") in line and "already exists" in line
    assert main(["import", str(classes_source), "same", "-w", str(workspace), "--overwrite"]) == 0
    assert "imported 'same': 4 cases, classification" in capsys.readouterr().out


def test_import_options(pairs_source, workspace, capsys):
    args = ["import", str(pairs_source), "p", "-w", str(workspace), "--layout", "pairs", "--labels", "masks"]
    assert main([*args, "--label-threshold", "none"]) == 0
    out = capsys.readouterr().out
    assert "labels {0: 'background', 255: 'label_255'}" in out
    assert main([*args, "--label-threshold", "abc", "--overwrite"]) == 2
    assert "--label-threshold 'abc'" in _one_error_line(capsys.readouterr().err)
    assert main(["import", str(pairs_source), "q", "-w", str(workspace), "--layout", "zip"]) == 2
    assert "unknown layout 'zip'" in _one_error_line(capsys.readouterr().err)


def test_debug_raises_and_does_not_stick(workspace, capsys):
    with pytest.raises(VesaliusError, match="no data set 'ghost'"):
        main(["--debug", "verify", "ghost", "-w", str(workspace)])
    # a later call without --debug prints one line again
    assert main(["verify", "ghost", "-w", str(workspace)]) == 2
    _one_error_line(capsys.readouterr().err)


def test_debug_environment_variable(workspace, monkeypatch):
    monkeypatch.setenv("VESALIUS_DEBUG", "1")
    with pytest.raises(VesaliusError):
        main(["verify", "ghost", "-w", str(workspace)])


def test_subprocess_errors_one_line_and_debug_traceback(tmp_path):
    missing = tmp_path / "missing_source"
    result = _run_module("import", str(missing), "x", "-w", str(tmp_path / "ws"), cwd=tmp_path)
    assert result.returncode == 2
    assert _one_error_line(result.stderr) == f"error: {missing}: source not found. Check the path."
    debug = _run_module("--debug", "import", str(missing), "x", "-w", str(tmp_path / "ws"), cwd=tmp_path)
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "VesaliusError" in debug.stderr and str(missing) in debug.stderr
    assert not (tmp_path / "vesalius_work").exists()


def test_usage_error_exit_code(capsys):
    assert main(["frobnicate"]) == 2
    assert "frobnicate" in capsys.readouterr().err


def test_measure_prints_volumes_and_writes_tables(tmp_path, capsys, make):
    from vesalius.io import Geometry, Image, write_image

    array = np.zeros((1, 10, 10, 10), np.uint8)
    array[0, 1:3, 1:3, 1:3] = 1  # 8 voxels
    array[0, 6:9, 6:9, 6:9] = 1  # 27 voxels
    geometry = Geometry((0.5, 0.5, 2.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    write_image(Image(array, geometry), tmp_path / "seg.nii.gz")
    write_image(Image(array.astype(np.float32) * 100, geometry), tmp_path / "img.nii.gz")
    args = ["measure", str(tmp_path / "seg.nii.gz"), "--image", str(tmp_path / "img.nii.gz")]
    assert main([*args, "-o", str(tmp_path / "m.csv")]) == 0
    printed = capsys.readouterr().out
    assert "1: 0.0175 mL in 2 component(s)" in printed  # 35 voxels x 0.5 mm^3
    rows = (tmp_path / "m.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1].split(",")[3] == "27"
    assert main([*args, "-o", str(tmp_path / "m.json")]) == 0
    assert (tmp_path / "m.json").read_text().startswith("{")
    assert main(["measure", str(tmp_path / "missing.nii.gz")]) == 2
