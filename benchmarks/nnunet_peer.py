"""nnU-Net v2 as the peer in the Hippocampus benchmark: train fold 0 on the CPU within a wall-clock budget.

Run it from the project's root::

    python benchmarks/nnunet_peer.py                      # 30-minute budget, fold 0
    python benchmarks/nnunet_peer.py --budget-minutes 3   # a quick end-to-end check

It sets itself up in a virtual environment of its own (``benchmarks/.peer-venv``, nnunetv2 installed with the
project's ``constraints.txt`` so that torch stays the CPU build), converts MSD ``Task04_Hippocampus`` from
``../shared/data`` with ``nnUNetv2_convert_MSD_dataset``, plans and preprocesses ``3d_fullres``, trains with a
trainer subclass sized to the budget, predicts the fold's validation cases with ``nnUNetv2_predict`` (mirroring
test-time augmentation, nnU-Net's default) and scores them with :func:`common.dice_per_class`. It prints
readable lines and one ``BENCHMARK_JSON {...}`` line; without the shared data it says so and exits 0.

How the budget is kept. The trainer (written into the work dir, found through ``nnUNet_extTrainer``) learns the
deadline (launch time + budget - a reserve for saving the final checkpoint) and, once nnU-Net has started, sizes
its schedule from the time left and a prior seconds per iteration (``--seconds-per-iter``, default 6.4, measured
on this kind of machine): about ten epochs of up to 50 iterations with two validation iterations each, so that
the poly learning-rate schedule runs to its end. After every epoch it re-plans the number of epochs from the
measured seconds per iteration and per-epoch overhead (the first epoch is the calibration), the last epoch made
shorter when that uses the end of the budget better, unless ``--fixed-schedule`` is given. Independently, the
driver stops the training process at budget + a small grace and predicts with the newest checkpoint
(``checkpoint_final.pth``, else ``checkpoint_latest.pth``, which the trainer saves after every epoch).

Deliberate departures from stock nnU-Net, all about time: the schedule above, no ``checkpoint_best.pth`` (unused
here) and no validation at the end of training (this script predicts the same cases itself, timed). The data
split is nnU-Net's own default (5-fold ``KFold(shuffle=True, random_state=12345)`` over the sorted case ids),
written to ``splits_final.json`` before training; the fold's validation case ids are part of the report so that
the Vesalius side can check it validates on the same cases.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    from common import REPO_ROOT, dice_per_class, emit_json, shared_data
except ImportError:  # imported as ``benchmarks.nnunet_peer`` from the project's root
    from benchmarks.common import REPO_ROOT, dice_per_class, emit_json, shared_data

DATASET = "Task04_Hippocampus"
CONFIGURATION = "3d_fullres"
PLANS = "nnUNetPlans"
TRAINER = "nnUNetTrainer_PeerBudget"
DEFAULT_VENV = REPO_ROOT / "benchmarks" / ".peer-venv"
DEFAULT_WORK_DIR = REPO_ROOT / "benchmarks" / ".work" / "nnunet"
CONSTRAINTS = REPO_ROOT / "constraints.txt"
#: Seconds per 3d_fullres training iteration measured on this kind of machine (2 cores, batch 7, 40x56x40).
DEFAULT_SECONDS_PER_ITER = 6.4
#: Seconds kept at the end of the budget for saving ``checkpoint_final.pth`` and letting the process exit.
END_RESERVE_S = 10.0
#: Processes nnU-Net may use (data augmentation workers, preprocessing, export): the machine has two cores.
N_PROC = 2

Log = Callable[[str], None]


class PeerError(RuntimeError):
    """A step of the nnU-Net pipeline failed; the message says which, and where its log is."""


def _print(message: str) -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------------------------------------------
# Schedule


@dataclass(frozen=True)
class Schedule:
    """How long nnU-Net trains: epochs x iterations per epoch, plus validation iterations after each epoch."""

    epochs: int
    iterations_per_epoch: int
    val_iterations: int

    @property
    def iterations(self) -> int:
        """Training iterations in all."""
        return self.epochs * self.iterations_per_epoch


def plan_schedule(
    available_s: float,
    seconds_per_iter: float,
    *,
    max_iterations_per_epoch: int = 50,
    max_epochs: int = 10,
    val_iterations: int = 2,
    epoch_overhead_s: float = 2.0,
) -> Schedule:
    """A schedule whose poly learning-rate decay ends within ``available_s`` seconds of training.

    Aims at ``max_epochs`` epochs (fewer for short budgets, about one per 150 s but at least three) of at most
    ``max_iterations_per_epoch`` iterations. Each epoch also costs ``val_iterations`` validation iterations
    (forward passes only, counted as 0.4 of a training iteration) and ``epoch_overhead_s`` for logging and the
    checkpoint. Never less than one epoch of one iteration.
    """
    if seconds_per_iter <= 0:
        raise ValueError("seconds_per_iter must be positive")
    available_s = max(0.0, available_s)
    per_epoch_fixed = val_iterations * 0.4 * seconds_per_iter + epoch_overhead_s
    target_epochs = min(max_epochs, max(3, round(available_s / 150.0)))
    total = (available_s - target_epochs * per_epoch_fixed) / seconds_per_iter
    per_epoch = min(max_iterations_per_epoch, max(1, round(total / target_epochs)))
    epochs = max(1, math.floor(available_s / (per_epoch * seconds_per_iter + per_epoch_fixed)))
    return Schedule(epochs=epochs, iterations_per_epoch=per_epoch, val_iterations=val_iterations)


def replan_epochs(
    done_epochs: int,
    remaining_s: float,
    iterations_per_epoch: int,
    seconds_per_iter: float,
    epoch_overhead_s: float,
    min_last_fraction: float = 0.25,
) -> tuple[int, int | None]:
    """Epochs in all after ``done_epochs``, given the measured speed and ``remaining_s`` seconds to the deadline.

    As many full epochs as fit, plus a shorter last one when the time left after them holds at least
    ``min_last_fraction`` of an epoch's iterations. Returns the total epochs and that last epoch's iterations
    (None when every epoch is a full one).
    """
    if seconds_per_iter <= 0:
        raise ValueError("seconds_per_iter must be positive")
    remaining_s = max(0.0, remaining_s)
    epoch_overhead_s = max(0.0, epoch_overhead_s)
    full = iterations_per_epoch * seconds_per_iter + epoch_overhead_s
    n_full = int(remaining_s // full)
    extra = int((remaining_s - n_full * full - epoch_overhead_s) // seconds_per_iter)
    if extra >= max(1, math.ceil(min_last_fraction * iterations_per_epoch)):
        return done_epochs + n_full + 1, min(extra, iterations_per_epoch)
    return done_epochs + n_full, None


# --------------------------------------------------------------------------------------------------------------
# Files written into the work dir

#: Defines the two operator schemas that the CUDA build of torchvision (pulled in by timm) expects from its
#: native library, just before torchvision is first imported, so that it imports with the CPU torch. Only
#: ``torchvision.ops.nms`` stays unusable; nnU-Net does not need it.
SITECUSTOMIZE_SOURCE = '''"""Written by benchmarks/nnunet_peer.py: lets the CUDA torchvision load with the CPU torch."""
import sys

_LIBRARY = None


class _TorchvisionOperatorFix:
    """Meta-path hook that runs once, on the first import of torchvision, and then steps aside."""

    def find_spec(self, name, path=None, target=None):
        global _LIBRARY
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        import torch

        _LIBRARY = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            _LIBRARY.define(op + "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        return None


sys.meta_path.insert(0, _TorchvisionOperatorFix())
'''

#: The trainer subclass. Its settings come from ``peer_budget.json`` next to it (written per run).
TRAINER_SOURCE = '''"""nnU-Net trainer for a wall-clock budget (written by benchmarks/nnunet_peer.py on every run)."""
import json
import os
import sys
import time
from pathlib import Path

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

_CONFIG = Path(__file__).with_name("peer_budget.json")


class nnUNetTrainer_PeerBudget(nnUNetTrainer):
    """Sizes epochs x iterations to the deadline in peer_budget.json and re-plans the epochs after each one."""

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.peer = json.loads(_CONFIG.read_text())
        self.save_every = 1  # checkpoint_latest after every epoch: the driver may have to stop us
        self.peer_iter_seconds = []
        self.peer_epochs = []  # per epoch: wall seconds, seconds in training iterations, iterations
        self.peer_last_epoch_iterations = None  # a shorter last epoch that uses the end of the budget
        self.peer_replans = []
        self.peer_loop_start = None

    def on_train_start(self):
        super().on_train_start()
        if self.peer["bench_dir"] not in sys.path:
            sys.path.append(self.peer["bench_dir"])
        from nnunet_peer import plan_schedule

        available = self.peer["deadline_unix"] - time.time()
        plan = plan_schedule(available, self.peer["seconds_per_iter"])
        self.num_epochs = plan.epochs
        self.num_iterations_per_epoch = plan.iterations_per_epoch
        self.num_val_iterations_per_epoch = plan.val_iterations
        self.lr_scheduler.max_steps = self.num_epochs
        self.print_to_log_file(
            f"peer: {available:.0f} s left for training: {plan.epochs} epochs x {plan.iterations_per_epoch} "
            f"iterations (+{plan.val_iterations} validation) at {self.peer['seconds_per_iter']:.2f} s/iteration"
        )

    def run_training(self):
        self.on_train_start()
        self.peer_loop_start = time.time()
        while self.current_epoch < self.num_epochs:
            epoch_start = time.time()
            self.on_epoch_start()
            self.on_train_epoch_start()
            iterations = self.num_iterations_per_epoch
            if self.peer_last_epoch_iterations and self.current_epoch == self.num_epochs - 1:
                iterations = self.peer_last_epoch_iterations
            outputs, in_iterations = [], 0.0
            for _ in range(iterations):
                start = time.time()
                outputs.append(self.train_step(next(self.dataloader_train)))
                self.peer_iter_seconds.append(time.time() - start)
                in_iterations += self.peer_iter_seconds[-1]
                self._peer_progress()
            self.on_train_epoch_end(outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = [self.validation_step(next(self.dataloader_val))
                               for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(val_outputs)
            self.on_epoch_end()
            self.peer_epochs.append([time.time() - epoch_start, in_iterations, iterations])
            self._peer_replan()
            self._peer_progress()
        self.on_train_end()

    def _peer_replan(self):
        if not self.peer.get("replan", True) or self.current_epoch >= self.num_epochs:
            return  # (after the planned last epoch: the learning rate has decayed, do not stretch the schedule)
        from nnunet_peer import replan_epochs

        recent = (self.peer_epochs[1:] or self.peer_epochs)[-3:]  # epoch 0 includes the warm-up
        seconds_per_iter = sum(e[1] for e in recent) / sum(e[2] for e in recent)
        overhead = sum(e[0] - e[1] for e in recent) / len(recent)
        remaining = self.peer["deadline_unix"] - time.time()
        epochs, last = replan_epochs(
            self.current_epoch, remaining, self.num_iterations_per_epoch, seconds_per_iter, overhead
        )
        if (epochs, last) != (self.num_epochs, self.peer_last_epoch_iterations):
            self.print_to_log_file(
                f"peer: {seconds_per_iter:.2f} s/iteration + {overhead:.1f} s per epoch, {remaining:.0f} s left: "
                f"{self.num_epochs} -> {epochs} epochs" + (f" (the last of {last} iterations)" if last else "")
            )
            self.peer_replans.append({"after_epoch": self.current_epoch, "epochs": epochs, "last_epoch": last})
            self.num_epochs = epochs
            self.peer_last_epoch_iterations = last
            self.lr_scheduler.max_steps = max(epochs, 1)

    def _peer_progress(self):
        path = Path(self.output_folder) / "peer_progress.json"
        state = {
            "iterations": len(self.peer_iter_seconds),
            "epochs_done": self.current_epoch,
            "num_epochs": self.num_epochs,
            "iterations_per_epoch": self.num_iterations_per_epoch,
            "val_iterations": self.num_val_iterations_per_epoch,
            "loop_start_unix": self.peer_loop_start,
            "now_unix": time.time(),
            "iter_seconds": self.peer_iter_seconds,
            "epochs": self.peer_epochs,
            "last_epoch_iterations": self.peer_last_epoch_iterations,
            "replans": self.peer_replans,
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)

    def save_checkpoint(self, filename):
        if not str(filename).endswith("checkpoint_best.pth"):  # unused here: spare the time
            super().save_checkpoint(filename)

    def perform_actual_validation(self, save_probabilities=False):
        self.print_to_log_file("peer: final validation skipped (the driver predicts the fold with nnUNetv2_predict)")
'''


# --------------------------------------------------------------------------------------------------------------
# Processes


@dataclass
class _Completed:
    """What a finished (or stopped) command did."""

    returncode: int
    seconds: float
    timed_out: bool
    lines: list[tuple[float, str]] = field(default_factory=list)


def _stop_group(proc: subprocess.Popen[str]) -> None:
    """Stop ``proc`` and the workers it started (its own process group): SIGTERM, then SIGKILL."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):  # whatever is left of the group: the augmentation workers
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _run(
    cmd: Sequence[str],
    env: dict[str, str] | None,
    log_file: Path,
    *,
    timeout_s: float | None = None,
    echo: Callable[[str], None] | None = None,
    keep_lines: bool = False,
) -> _Completed:
    """Run ``cmd`` in a process group of its own, its output into ``log_file``; stop it after ``timeout_s``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    lines: list[tuple[float, str]] = []
    start = time.monotonic()
    with log_file.open("w", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(
            list(cmd),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,
        )

        def pump() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                log.write(raw)
                log.flush()
                if keep_lines:
                    lines.append((time.monotonic() - start, line))
                if echo is not None:
                    echo(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop_group(proc)
        except BaseException:
            _stop_group(proc)
            raise
        seconds = time.monotonic() - start
        reader.join(timeout=30)
    return _Completed(proc.returncode, seconds, timed_out, lines)


def _check(done: _Completed, what: str, log_file: Path) -> None:
    """Raise :class:`PeerError` with the end of the log when a command failed."""
    if done.returncode != 0:
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-25:])
        raise PeerError(f"{what} failed (exit {done.returncode}); log: {log_file}\n{tail}")


# --------------------------------------------------------------------------------------------------------------
# Setting up


def _python311() -> str:
    """A Python 3.11 interpreter to make the peer venv with."""
    found = shutil.which("python3.11")
    if found:
        return found
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    raise PeerError("python3.11 not found: it is needed to create the nnU-Net venv")


def ensure_peer_venv(venv: Path, log: Log = _print) -> Path:
    """The peer venv's Python, after creating the venv and installing nnunetv2 (torch pinned) when needed."""
    python = venv / "bin" / "python"
    marker = venv / ".peer-installed"
    if python.exists() and marker.exists():
        return python
    if not CONSTRAINTS.is_file():
        raise PeerError(f"{CONSTRAINTS} is missing: without it pip would install a multi-GB CUDA torch")
    venv.mkdir(parents=True, exist_ok=True)
    logs = venv / "peer-setup.log"
    if not python.exists():
        log(f"creating the nnU-Net venv {venv}")
        done = _run([_python311(), "-m", "venv", str(venv)], None, logs)
        _check(done, "creating the venv", logs)
    log(f"installing nnunetv2 into {venv} (torch pinned by {CONSTRAINTS.name}; a few minutes the first time)")
    done = _run([str(python), "-m", "pip", "install", "-c", str(CONSTRAINTS), "nnunetv2"], None, logs)
    _check(done, "pip install nnunetv2", logs)
    versions = _peer_versions(python)
    log(f"installed nnunetv2 {versions['nnunetv2']} with torch {versions['torch']}")
    marker.write_text(json.dumps(versions) + "\n")
    return python


def _peer_versions(python: Path) -> dict[str, str]:
    """Versions of torch, nnunetv2 and torchvision in the peer venv (read from metadata: nothing is imported)."""
    code = (
        "import importlib.metadata as m, json\n"
        "out = {}\n"
        "for name in ('torch', 'nnunetv2', 'torchvision'):\n"
        "    try:\n"
        "        out[name] = m.version(name)\n"
        "    except m.PackageNotFoundError:\n"
        "        out[name] = None\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def _needs_torchvision_fix(python: Path) -> bool:
    """Whether torchvision fails to import in the peer venv (its CUDA build next to the CPU torch)."""
    result = subprocess.run([str(python), "-c", "import torchvision"], capture_output=True, text=True, env=_clean_env())
    return result.returncode != 0


def _clean_env() -> dict[str, str]:
    """The environment without the caller's Python settings (another venv's paths must not leak in)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.setdefault("PATH", "/usr/bin:/bin")
    return env


def nnunet_env(work_dir: Path, venv: Path, torchvision_fix: bool) -> dict[str, str]:
    """Environment for every nnU-Net command: its folders, the extra trainer, two processes, the operator fix."""
    env = _clean_env()
    env.update(
        {
            "nnUNet_raw": str(work_dir / "nnUNet_raw"),
            "nnUNet_preprocessed": str(work_dir / "nnUNet_preprocessed"),
            "nnUNet_results": str(work_dir / "nnUNet_results"),
            "nnUNet_extTrainer": str(work_dir / "trainers"),
            "nnUNet_n_proc_DA": str(N_PROC),
            "nnUNet_def_n_proc": str(N_PROC),
            "nnUNet_compile": "false",
            "OMP_NUM_THREADS": "1",  # workers single-threaded; nnU-Net sets torch's threads to the core count
            "MKL_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            "MPLBACKEND": "Agg",
            "VIRTUAL_ENV": str(venv),
            "PATH": f"{venv / 'bin'}{os.pathsep}{env['PATH']}",
        }
    )
    if torchvision_fix:
        env["PYTHONPATH"] = str(work_dir / "sitefix")
    return env


def peer_environment(work_dir: Path, venv: Path = DEFAULT_VENV, log: Log = _print) -> tuple[Path, dict[str, str]]:
    """The peer venv's Python (set up when needed) and the environment for nnU-Net commands in ``work_dir``."""
    python = ensure_peer_venv(venv, log)
    _write_support_files(work_dir)
    return python, nnunet_env(work_dir, venv, _needs_torchvision_fix(python))


def _write_support_files(work_dir: Path) -> None:
    """The sitecustomize fix and the trainer subclass, into the work dir."""
    (work_dir / "sitefix").mkdir(parents=True, exist_ok=True)
    (work_dir / "sitefix" / "sitecustomize.py").write_text(SITECUSTOMIZE_SOURCE)
    (work_dir / "trainers").mkdir(parents=True, exist_ok=True)
    (work_dir / "trainers" / f"{TRAINER}.py").write_text(TRAINER_SOURCE)


def _write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------------------
# Data


def dataset_name(data_dir: Path) -> tuple[int, str]:
    """nnU-Net's id and name for an MSD folder: ``Task04_Hippocampus`` -> ``(4, "Dataset004_Hippocampus")``."""
    task, _, name = data_dir.name.partition("_")
    if not task.startswith("Task") or not task[4:].isdigit() or not name:
        raise PeerError(f"{data_dir} is not an MSD folder named TaskNN_Name")
    dataset_id = int(task[4:])
    return dataset_id, f"Dataset{dataset_id:03d}_{name}"


def _case_ids(labels_dir: Path) -> list[str]:
    """Sorted case ids of the ``.nii.gz`` files in a folder (hidden and ``_`` files left out, as nnU-Net does)."""
    return sorted(p.name[: -len(".nii.gz")] for p in labels_dir.glob("*.nii.gz") if not p.name.startswith((".", "_")))


def convert(data_dir: Path, work_dir: Path, python: Path, env: dict[str, str], log: Log = _print) -> Path:
    """Convert the MSD folder into nnUNet_raw (skipped when done); the raw dataset folder."""
    _, name = dataset_name(data_dir)
    raw = work_dir / "nnUNet_raw" / name
    expected = len(_case_ids(data_dir / "labelsTr"))
    if (raw / "dataset.json").is_file() and len(list((raw / "imagesTr").glob("*.nii.gz"))) == expected:
        log(f"conversion: done before ({raw})")
        return raw
    if raw.exists():  # an interrupted conversion: nnU-Net refuses an id that is taken
        shutil.rmtree(raw)
    log(f"conversion: nnUNetv2_convert_MSD_dataset {data_dir.name} -> {name}")
    logs = work_dir / "logs" / "convert.log"
    cmd = [str(python.parent / "nnUNetv2_convert_MSD_dataset"), "-i", str(data_dir), "-np", str(N_PROC)]
    done = _run(cmd, env, logs)
    _check(done, "nnUNetv2_convert_MSD_dataset", logs)
    log(f"conversion: {expected} cases in {done.seconds:.0f} s")
    return raw


def preprocess(data_dir: Path, work_dir: Path, python: Path, env: dict[str, str], log: Log = _print) -> Path:
    """Plan and preprocess ``3d_fullres`` with the integrity check (skipped when done); the plans file."""
    dataset_id, name = dataset_name(data_dir)
    folder = work_dir / "nnUNet_preprocessed" / name
    marker = folder / f".peer_preprocessed_{CONFIGURATION}"
    plans = folder / f"{PLANS}.json"
    if marker.is_file() and plans.is_file():
        log(f"preprocessing: done before ({folder})")
        return plans
    log(f"preprocessing: nnUNetv2_plan_and_preprocess -d {dataset_id} -c {CONFIGURATION}")
    logs = work_dir / "logs" / "plan_and_preprocess.log"
    cmd = [
        str(python.parent / "nnUNetv2_plan_and_preprocess"),
        "-d", str(dataset_id),
        "-c", CONFIGURATION,
        "-npfp", str(N_PROC),
        "-np", str(N_PROC),
        "--verify_dataset_integrity",
    ]  # fmt: skip
    done = _run(cmd, env, logs)
    _check(done, "nnUNetv2_plan_and_preprocess", logs)
    marker.write_text(f"{done.seconds:.1f} s\n")
    log(f"preprocessing: {done.seconds:.0f} s")
    return plans


def ensure_splits(raw: Path, preprocessed: Path, python: Path, env: dict[str, str]) -> list[dict[str, list[str]]]:
    """nnU-Net's default 5-fold split, made with nnU-Net's own function and saved as ``splits_final.json``.

    The split is ``KFold(n_splits=5, shuffle=True, random_state=12345)`` over the sorted case ids, exactly what
    the trainer would make on its first run; making it here, before training, gives the fold's validation ids
    even when the training is stopped early.
    """
    path = preprocessed / "splits_final.json"
    if not path.is_file():
        cases = _case_ids(raw / "labelsTr")
        code = (
            "import json, sys\n"
            "from nnunetv2.utilities.crossval_split import generate_crossval_split\n"
            "cases = json.loads(sys.stdin.read())\n"
            "splits = generate_crossval_split(cases, seed=12345, n_splits=5)\n"
            "print(json.dumps([{k: [str(c) for c in v] for k, v in s.items()} for s in splits]))\n"
        )
        result = subprocess.run(
            [str(python), "-c", code], input=json.dumps(cases), capture_output=True, text=True, env=env
        )
        if result.returncode != 0:
            raise PeerError(f"making the 5-fold split failed:\n{result.stderr[-2000:]}")
        _write_json(path, json.loads(result.stdout.strip().splitlines()[-1]))
    return json.loads(path.read_text())


def patch_and_batch(plans_file: Path) -> tuple[list[int], int]:
    """Patch size and batch size of ``3d_fullres`` from nnU-Net's plans."""
    config = json.loads(plans_file.read_text())["configurations"][CONFIGURATION]
    return [int(s) for s in config["patch_size"]], int(config["batch_size"])


# --------------------------------------------------------------------------------------------------------------
# Training, prediction, scoring


def train(
    dataset_id: int,
    name: str,
    fold: int,
    work_dir: Path,
    python: Path,
    env: dict[str, str],
    budget_s: float,
    seconds_per_iter: float,
    replan: bool = True,
    log: Log = _print,
) -> dict[str, Any]:
    """Train fold ``fold`` within ``budget_s`` seconds of wall clock; what happened, the checkpoint to use."""
    fold_dir = work_dir / "nnUNet_results" / name / f"{TRAINER}__{PLANS}__{CONFIGURATION}" / f"fold_{fold}"
    if fold_dir.exists():  # every run trains afresh: the budget is the point
        shutil.rmtree(fold_dir)
    grace_s = min(60.0, max(15.0, 0.05 * budget_s))
    launch = time.time()
    _write_json(
        work_dir / "trainers" / "peer_budget.json",
        {
            "deadline_unix": launch + budget_s - END_RESERVE_S,
            "seconds_per_iter": seconds_per_iter,
            "replan": replan,
            "bench_dir": str(Path(__file__).resolve().parent),
        },
    )
    logs = work_dir / "logs" / f"train_fold{fold}.log"
    cmd = [
        str(python.parent / "nnUNetv2_train"), str(dataset_id), CONFIGURATION, str(fold),
        "-tr", TRAINER, "-p", PLANS, "-device", "cpu",
    ]  # fmt: skip
    log(f"training: budget {budget_s:.0f} s (stopped at {budget_s + grace_s:.0f} s at the latest); log {logs}")

    def echo(line: str) -> None:
        text = line.split(": ", 1)[-1] if line[:2].isdigit() else line
        if text.startswith(("peer:", "Epoch ", "train_loss", "Pseudo dice", "Epoch time")):
            log(f"  nnU-Net | {text}")

    done = _run(cmd, env, logs, timeout_s=budget_s + grace_s, echo=echo)
    if done.timed_out:
        log(f"training: stopped after {done.seconds:.0f} s (over the budget)")
    elif done.returncode != 0:
        _check(done, "nnUNetv2_train", logs)
    else:
        log(f"training: finished in {done.seconds:.0f} s")
    checkpoint = next((c for c in ("checkpoint_final.pth", "checkpoint_latest.pth") if (fold_dir / c).is_file()), None)
    progress_file = fold_dir / "peer_progress.json"
    progress = json.loads(progress_file.read_text()) if progress_file.is_file() else {}
    return {
        "fold_dir": fold_dir,
        "checkpoint": checkpoint,
        "wall_s": done.seconds,
        "stopped_by_driver": done.timed_out,
        "grace_s": grace_s,
        "progress": progress,
        "log": logs,
    }


def predict(
    dataset_id: int,
    fold: int,
    cases: list[str],
    raw: Path,
    checkpoint: str,
    work_dir: Path,
    python: Path,
    env: dict[str, str],
    log: Log = _print,
) -> dict[str, Any]:
    """Predict ``cases`` with ``nnUNetv2_predict`` (default mirroring TTA), timing the whole and each case."""
    inputs = work_dir / "predict_input" / f"fold_{fold}"
    outputs = work_dir / "predictions" / f"fold_{fold}"
    for folder in (inputs, outputs):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    for case in cases:
        (inputs / f"{case}_0000.nii.gz").symlink_to(raw / "imagesTr" / f"{case}_0000.nii.gz")
    logs = work_dir / "logs" / f"predict_fold{fold}.log"
    cmd = [
        str(python.parent / "nnUNetv2_predict"), "-i", str(inputs), "-o", str(outputs),
        "-d", str(dataset_id), "-c", CONFIGURATION, "-tr", TRAINER, "-p", PLANS, "-f", str(fold),
        "-chk", checkpoint, "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar",
    ]  # fmt: skip
    log(f"prediction: {len(cases)} validation cases with {checkpoint} (mirroring TTA); log {logs}")
    done = _run(cmd, env, logs, keep_lines=True)
    _check(done, "nnUNetv2_predict", logs)
    started: dict[str, float] = {}
    per_case: dict[str, float] = {}
    for t, line in done.lines:  # "Predicting X:" ... "done with X" bracket the network's work on a case
        if line.startswith("Predicting ") and line.endswith(":"):
            started[line[len("Predicting ") : -1].removesuffix(".nii.gz")] = t
        elif line.startswith("done with "):
            case = line[len("done with ") :].strip().removesuffix(".nii.gz")
            if case in started:
                per_case[case] = t - started[case]
    missing = [c for c in cases if not (outputs / f"{c}.nii.gz").is_file()]
    if missing:
        raise PeerError(f"nnUNetv2_predict wrote no prediction for {missing[:5]}...; log: {logs}")
    return {
        "output_dir": outputs,
        "wall_s": done.seconds,
        "s_per_case": done.seconds / len(cases),
        "network_s_per_case": statistics.mean(per_case.values()) if per_case else None,
    }


def _load_labels(path: Path) -> Any:
    """A label map as an integer NumPy array (nibabel, available in the peer venv)."""
    import nibabel
    import numpy as np

    return np.asarray(nibabel.load(str(path)).dataobj).astype(np.int16)


def score_cases(pred_dir: Path, ref_dir: Path, cases: list[str], labels: list[int]) -> dict[str, dict[int, float]]:
    """Dice per class of each case's prediction against its reference label map."""
    return {
        case: dice_per_class(
            _load_labels(pred_dir / f"{case}.nii.gz"), _load_labels(ref_dir / f"{case}.nii.gz"), labels
        )
        for case in cases
    }


def score(
    pred_dir: Path, ref_dir: Path, cases: list[str], labels: list[int], python: Path, work_dir: Path
) -> dict[str, dict[int, float]]:
    """:func:`score_cases` run in the peer venv (it has nibabel), through this file's ``--score`` mode."""
    request = work_dir / "score_request.json"
    _write_json(request, {"pred_dir": str(pred_dir), "ref_dir": str(ref_dir), "cases": cases, "labels": labels})
    result = subprocess.run(
        [str(python), str(Path(__file__).resolve()), "--score", str(request)],
        capture_output=True,
        text=True,
        env=_clean_env(),
    )
    if result.returncode != 0:
        raise PeerError(f"scoring failed:\n{result.stderr[-2000:]}")
    raw = json.loads(result.stdout.strip().splitlines()[-1])
    return {case: {int(k): float(v) for k, v in d.items()} for case, d in raw.items()}


def _score_main(request: Path) -> None:
    """The ``--score`` mode: read a request, print each case's Dice per class as one JSON line."""
    req = json.loads(request.read_text())
    scores = score_cases(Path(req["pred_dir"]), Path(req["ref_dir"]), req["cases"], req["labels"])
    print(json.dumps({case: {str(k): v for k, v in d.items()} for case, d in scores.items()}))


def machine_info(python: Path) -> dict[str, Any]:
    """Platform, CPU, core count and the peer's package versions."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = _peer_versions(python)
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": versions["torch"],
        "nnunetv2": versions["nnunetv2"],
    }


# --------------------------------------------------------------------------------------------------------------
# The whole benchmark


def run_nnunet(
    data_dir: Path,
    work_dir: Path,
    budget_s: float,
    fold: int = 0,
    *,
    venv: Path = DEFAULT_VENV,
    seconds_per_iter: float = DEFAULT_SECONDS_PER_ITER,
    replan: bool = True,
    log: Log = _print,
) -> dict[str, Any]:
    """Set up, convert, preprocess, train within ``budget_s`` seconds, predict and score fold ``fold``.

    Returns the report (the content of the ``BENCHMARK_JSON`` line): Dice per class and its mean over classes
    (each the mean over the fold's validation cases), throughput, timings, the validation case ids, machine.
    Raises :class:`PeerError` when a step fails.
    """
    data_dir = Path(data_dir).resolve()
    work_dir = Path(work_dir).resolve()
    if not (data_dir / "dataset.json").is_file():
        raise PeerError(f"{data_dir} is not an MSD data set (no dataset.json)")
    work_dir.mkdir(parents=True, exist_ok=True)
    python, env = peer_environment(work_dir, Path(venv).resolve(), log)
    dataset_id, name = dataset_name(data_dir)

    raw = convert(data_dir, work_dir, python, env, log)
    plans_file = preprocess(data_dir, work_dir, python, env, log)
    splits = ensure_splits(raw, plans_file.parent, python, env)
    if not 0 <= fold < len(splits):
        raise PeerError(f"fold {fold} does not exist: the split has {len(splits)} folds")
    val_cases = sorted(splits[fold]["val"])
    patch, batch = patch_and_batch(plans_file)
    log(
        f"fold {fold}: {len(splits[fold]['train'])} training, {len(val_cases)} validation cases; "
        f"patch {'x'.join(map(str, patch))}, batch {batch}"
    )

    trained = train(dataset_id, name, fold, work_dir, python, env, budget_s, seconds_per_iter, replan, log)
    if trained["checkpoint"] is None:
        raise PeerError(f"training left no checkpoint (it did not finish an epoch); log: {trained['log']}")
    progress = trained["progress"]
    iterations = int(progress.get("iterations", 0))
    loop_s = (progress["now_unix"] - progress["loop_start_unix"]) if progress.get("loop_start_unix") else None
    steps = progress.get("iter_seconds", [])[1:] or progress.get("iter_seconds", [])

    predicted = predict(dataset_id, fold, val_cases, raw, trained["checkpoint"], work_dir, python, env, log)
    labels_json = json.loads((raw / "dataset.json").read_text())["labels"]
    labels = sorted(int(v) for v in labels_json.values() if int(v) != 0)
    class_names = {int(v): k for k, v in labels_json.items() if int(v) != 0}
    per_case = score(predicted["output_dir"], data_dir / "labelsTr", val_cases, labels, python, work_dir)
    dice = {label: statistics.mean(d[label] for d in per_case.values()) for label in labels}

    voxels = math.prod(patch) * batch * iterations
    return {
        "tool": "nnunetv2",
        "configuration": CONFIGURATION,
        "trainer": TRAINER,
        "dataset": data_dir.name,
        "fold": fold,
        "budget_s": budget_s,
        "dice_per_class": dice,
        "class_names": class_names,
        "mean_dice": statistics.mean(dice.values()),
        "iters_per_s": iterations / loop_s if loop_s else None,
        "voxels_per_s": voxels / loop_s if loop_s else None,
        "s_per_iter_median": statistics.median(steps) if steps else None,
        "iterations": iterations,
        "epochs_done": progress.get("epochs_done"),
        "schedule": {
            "epochs_planned": progress.get("num_epochs"),
            "iterations_per_epoch": progress.get("iterations_per_epoch"),
            "last_epoch_iterations": progress.get("last_epoch_iterations"),
            "val_iterations_per_epoch": progress.get("val_iterations"),
            "replans": progress.get("replans", []),
            "seconds_per_iter_prior": seconds_per_iter,
            "replan": replan,
        },
        "patch_size": patch,
        "batch_size": batch,
        "train_seconds": trained["wall_s"],
        "train_loop_seconds": loop_s,
        "stopped_by_budget": trained["stopped_by_driver"],
        "checkpoint": trained["checkpoint"],
        "predict_seconds": predicted["wall_s"],
        "predict_s_per_case": predicted["s_per_case"],
        "predict_network_s_per_case": predicted["network_s_per_case"],
        "tta": "mirroring",
        "n_val_cases": len(val_cases),
        "val_cases": val_cases,
        "dice_per_case": per_case,
        "machine": machine_info(python),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "work_dir": str(work_dir),
    }


def _summary(result: dict[str, Any]) -> list[str]:
    """Readable lines for a report."""
    names = result["class_names"]
    dice = ", ".join(f"{names[k]} {v:.3f}" for k, v in result["dice_per_class"].items())

    def num(value: float | None, fmt: str) -> str:
        return "n/a" if value is None else format(value, fmt)

    return [
        f"nnU-Net v2 {result['configuration']}, fold {result['fold']}, budget {result['budget_s'] / 60:.1f} min",
        f"  validation Dice ({result['n_val_cases']} cases): mean {result['mean_dice']:.3f} ({dice})",
        f"  training: {result['iterations']} iterations, {result['epochs_done']} epochs in "
        f"{result['train_seconds']:.0f} s ({'stopped at the budget' if result['stopped_by_budget'] else 'finished'}"
        f"), {num(result['s_per_iter_median'], '.2f')} s/iteration (median), "
        f"{num(result['iters_per_s'], '.3f')} iterations/s, {num(result['voxels_per_s'], '.3g')} voxels/s",
        f"  prediction: {result['predict_s_per_case']:.2f} s per case all in "
        f"({num(result['predict_network_s_per_case'], '.2f')} s network), mirroring TTA, {result['checkpoint']}",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run the peer benchmark, print the summary and the ``BENCHMARK_JSON`` line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--budget-minutes", type=float, default=30.0, help="training wall-clock budget (30)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR, help=f"(default {DEFAULT_WORK_DIR})")
    parser.add_argument("--fold", type=int, default=0, help="fold of nnU-Net's 5-fold split (0)")
    parser.add_argument(
        "--seconds-per-iter",
        type=float,
        default=DEFAULT_SECONDS_PER_ITER,
        help=f"prior seconds per training iteration that sizes the schedule ({DEFAULT_SECONDS_PER_ITER})",
    )
    parser.add_argument("--fixed-schedule", action="store_true", help="do not re-plan epochs from measured times")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help=f"peer venv (default {DEFAULT_VENV})")
    parser.add_argument("--data-dir", type=Path, default=None, help=f"MSD folder (default ../shared/data/{DATASET})")
    parser.add_argument("--score", type=Path, default=None, help=argparse.SUPPRESS)  # internal, in the peer venv
    args = parser.parse_args(argv)

    if args.score is not None:
        _score_main(args.score)
        return 0
    data_dir = args.data_dir or shared_data(DATASET)
    if data_dir is None or not data_dir.is_dir():
        where = args.data_dir or f"../shared/data/{DATASET}"
        print(f"SKIP: {where} is not here, so there is nothing to benchmark nnU-Net on.")
        return 0
    if args.budget_minutes <= 0 or args.seconds_per_iter <= 0:
        parser.error("--budget-minutes and --seconds-per-iter must be positive")
    try:
        result = run_nnunet(
            data_dir,
            args.work_dir,
            args.budget_minutes * 60.0,
            args.fold,
            venv=args.venv,
            seconds_per_iter=args.seconds_per_iter,
            replan=not args.fixed_schedule,
        )
    except PeerError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    for line in _summary(result):
        print(line)
    emit_json(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
