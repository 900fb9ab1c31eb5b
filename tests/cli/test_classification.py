"""Classification from the command line: import, plan, train, predict with Grad-CAM, evaluate."""

from __future__ import annotations

import csv
import json

from tests.helpers import SIDE, synthetic_npz
from vesalius.cli import main


def test_cli_import_train_predict_evaluate(tmp_path, capsys, one_torch_thread):
    source = synthetic_npz(tmp_path / "lesions.npz", {"train": 24, "val": 8, "test": 6})
    ws = str(tmp_path / "ws")
    assert main(["import", str(source), "les", "-w", ws]) == 0
    assert main(["plan", "les", "-w", ws]) == 0
    plan = json.loads((tmp_path / "ws" / "preprocessed" / "les" / "classification_plan.json").read_text())
    assert plan["task"] == "classification" and plan["input_size"] == [SIDE, SIDE]
    assert "plan written to" in capsys.readouterr().out
    assert main(["train", "les", "-w", ws, "--network", "cnn", "--epochs", "3", "--no-validate"]) == 0
    run = tmp_path / "ws" / "runs" / "les" / "cnn" / "fold_official"
    assert "trained 3 epochs" in capsys.readouterr().out
    images = tmp_path / "to_predict"
    images.mkdir()
    for path in sorted((tmp_path / "ws" / "datasets" / "les" / "imagesTr").glob("test_*"))[:4]:
        (images / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "out"
    assert main(["predict", "-i", str(images), "-o", str(out), "-m", str(run), "--explain"]) == 0
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == 4 and set(rows[0]) >= {"case_id", "predicted", "p_0", "p_1"}
    assert abs(float(rows[0]["p_0"]) + float(rows[0]["p_1"]) - 1) < 1e-4
    assert len(list((out / "gradcam").glob("*.png"))) == 4
    capsys.readouterr()
    for wrong in (
        ["predict", "-i", str(images), "-o", str(out), "-m", str(run), "--fast"],  # a segmentation option
        ["train", "les", "-w", ws, "--iters-per-epoch", "5"],
        ["train", "les", "-w", ws, "--config", "3d"],
    ):
        assert main(wrong) == 2
        err = capsys.readouterr().err.strip()
        assert (
            len(err.splitlines()) == 1 and err.startswith("error: ") and ("does not apply" in err or "--config" in err)
        )
    assert main(["evaluate", str(out / "predictions.csv"), "les", "-w", ws]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == 4 and 0 <= summary["accuracy"] <= 1 and len(summary["accuracy_ci"]) == 2
    assert "accuracy" in capsys.readouterr().out
