"""``vesalius report`` from the command line: written into the run folder by default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vesalius.cli import main


def test_report_command_writes_into_the_run_by_default(fake_run: Path, tmp_path: Path, capsys: Any) -> None:
    import shutil

    run = tmp_path / "ws" / "runs" / "ph" / "3d" / "fold_0"
    shutil.copytree(fake_run.parents[3], tmp_path / "ws")
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").is_file() and str(run / "report.html") in capsys.readouterr().out
    assert main(["report", str(tmp_path)]) == 2
    assert "neither a run folder" in capsys.readouterr().err
