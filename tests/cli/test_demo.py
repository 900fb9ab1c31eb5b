"""``vesalius demo``: the whole pipeline end to end."""

from __future__ import annotations

import json

import pytest

from vesalius.cli import main

pytestmark = pytest.mark.slow


def test_demo_runs_the_pipeline_end_to_end(tmp_path, capsys):
    ws = tmp_path / "demo_ws"
    assert main(["demo", "--cases", "10", "--time-budget", "6s", "-w", str(ws)]) == 0
    printed = capsys.readouterr().out
    assert "validation Dice" in printed and "evaluation organ: Dice" in printed
    assert "on ONNX Runtime without torch" in printed and (ws / "exports" / "demo_phantom.vpkg").is_file()
    onnx_labels = sorted(p.name for p in (ws / "predictions" / "demo_phantom_onnxruntime").glob("*.nii.gz"))
    assert onnx_labels == sorted(p.name for p in (ws / "predictions" / "demo_phantom").glob("*.nii.gz"))
    assert f"report: {ws.absolute() / 'reports' / 'demo_phantom.html'}" in printed
    predictions = ws / "predictions" / "demo_phantom"
    assert (predictions / "metrics.csv").is_file() and (predictions / "measurements.csv").is_file()
    summary = json.loads((predictions / "summary.json").read_text())
    assert summary["num_cases"] == len(list(predictions.glob("*.nii.gz"))) >= 2
