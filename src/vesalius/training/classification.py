"""Classification training: a planned classifier on one split of a classification data set, to checkpoints.

The run: the data set's cases of the split (:func:`vesalius.data.splits.classification_split`) are read once,
normalised and resized to the plan's input (:mod:`vesalius.preprocessing.classification`) and kept in memory.
Each epoch visits the training cases in an order drawn from ``(seed, epoch)`` (or, with ``balance="sampling"``, as
many cases drawn with equal class probability); each batch is augmented on the device with the plan's settings
(:class:`vesalius.augmentation.Augmenter`, seeded by ``(seed, iteration)``) and takes one step on the loss of the
target type: cross-entropy (binary, multi-class; class weights with ``balance="weights"``, label smoothing),
binary cross-entropy per label (multi-label; positive weights with ``balance="weights"``), or binary
cross-entropy on the cumulative targets ``y > k`` (ordinal). AdamW or SGD (momentum 0.9, Nesterov); the learning
rate follows the larger of epoch progress and time-budget progress (:mod:`vesalius.training.schedule`: cosine,
step or poly).

After each epoch: validation loss, accuracy and AUC (MONAI's ``compute_roc_auc``; macro over classes or labels) on
the validation cases, a log row (``log.csv``, TensorBoard, ``progress.png``), ``checkpoint_latest.pt``, and
``checkpoint_best.pt`` when the validation AUC improved. Training stops after ``epochs``, when the time budget is
spent (also mid-epoch), or after ``early_stopping`` epochs without a better AUC. ``checkpoint_final.pt`` holds
the best epoch's weights (highest AUC; on equal AUC, lowest validation loss), or the last epoch's without
validation cases.

The run folder ``runs/NAME/NETWORK/fold_F`` holds ``plan.json``, ``training.json`` (resolved settings, network,
split, versions), the log and the checkpoints. The plan is ``preprocessed/NAME/classification_plan.json``, made on
first use from the data set's non-test cases and read from there afterwards (edit it to change the defaults).

Determinism: the initial weights depend on ``seed``, the batches of epoch ``e`` on ``(seed, e)`` and their
augmentation on ``(seed, iteration)``; a run resumed from ``checkpoint_latest.pt`` continues as the uninterrupted
run would have (except where the learning rate follows a wall-clock budget).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vesalius.augmentation.transforms import Augmenter
from vesalius.data.dataset import Dataset, write_json_atomic
from vesalius.data.splits import classification_split
from vesalius.errors import VesaliusError
from vesalius.models.classifiers import build_classifier, load_pretrained, num_outputs, to_probabilities
from vesalius.planning.classification import fingerprint_arrays, load_classification_rules, network, plan_classification
from vesalius.precision import autocast_dtype, fp32_small_convolutions, memory_format
from vesalius.preprocessing.classification import prepare_images
from vesalius.training.checkpoint import check_run_folder, load_checkpoint, open_run_folder, save_checkpoint
from vesalius.training.classification_config import RESUMABLE, ClassificationConfig
from vesalius.training.logs import TrainingLog
from vesalius.training.schedule import learning_rate, progress
from vesalius.training.trainer import ProgressBar, resumed_config, step_seed
from vesalius.workspace import Workspace

__all__ = [
    "ClassificationResult",
    "class_indices",
    "classification_plan",
    "encode_targets",
    "plan_classification_dataset",
    "resolve_fold",
    "train_classification",
]

EpochCallback = Callable[[dict[str, float]], None]
GRADIENT_CLIP = 5.0


@dataclass
class ClassificationResult:
    """What a finished classification run produced.

    ``stopped`` says why it ended: ``"epochs"``, ``"time budget"`` or ``"early stopping"``; ``best_auc`` is the
    best validation AUC (NaN without validation) reached at epoch ``best_epoch``; ``validation`` is filled by
    :func:`vesalius.evaluation.classification_eval.validate_classifier`.
    """

    run_dir: Path
    epochs: int
    iterations: int
    elapsed_s: float
    best_epoch: int | None
    best_auc: float
    stopped: str
    validation: dict[str, Any] | None = None


def class_indices(dataset: Dataset) -> list[int]:
    """The data set's class (or label) values in output order: output ``k`` of a network is class ``values[k]``."""
    return sorted(dataset.labels)


def encode_targets(dataset: Dataset, case_ids: Sequence[str]) -> np.ndarray:
    """Targets of ``case_ids`` as network outputs expect them: int64 ``(N,)`` output indices, or for multi-label
    data float32 ``(N, L)`` flags."""
    if dataset.target_type == "multilabel":
        return np.asarray([dataset.case(c).target for c in case_ids], dtype=np.float32).reshape(len(case_ids), -1)
    index = {v: k for k, v in enumerate(class_indices(dataset))}
    return np.asarray([index[dataset.case(c).target] for c in case_ids], dtype=np.int64)


def resolve_fold(fold: int | str, dataset: Dataset) -> int | str:
    """``"auto"``: ``"official"`` where the cases carry the source's train and val split, else fold 0."""
    if fold != "auto":
        return fold
    splits = {c.split for c in dataset.cases}
    return "official" if {"train", "val"} <= splits else 0


def _read_arrays(dataset: Dataset, case_ids: Sequence[str]) -> list[np.ndarray]:
    return [dataset.read_case(dataset.case(c))[0].array for c in case_ids]


def classification_plan(
    dataset: Dataset,
    ws: Workspace,
    arrays: dict[str, np.ndarray],
    device: str,
    time_budget_s: float | None = None,
    replan: bool = False,
) -> dict[str, Any]:
    """The data set's classification plan: read from ``preprocessed/NAME/classification_plan.json``, or (absent, or
    ``replan``) made from the non-test cases' images ``arrays`` (case id -> ``(C, *spatial)``) and written there."""
    path = ws.root / "preprocessed" / dataset.name / "classification_plan.json"
    if path.is_file() and not replan:
        return json.loads(path.read_text())
    ids = sorted(arrays)
    targets = encode_targets(dataset, ids)
    k = len(dataset.labels)
    counts = targets.sum(axis=0) if targets.ndim == 2 else np.bincount(targets, minlength=k)
    fingerprint = fingerprint_arrays([arrays[c] for c in ids], counts.astype(int).tolist())
    plan = plan_classification(dataset, fingerprint, device=device, time_budget_s=time_budget_s)
    write_json_atomic(path, plan)
    return plan


def plan_classification_dataset(
    name: str,
    workspace: str | Path | Workspace | None = None,
    *,
    device: str = "cpu",
    time_budget_s: float | None = None,
) -> tuple[dict[str, Any], Path]:
    """Make the classification plan of data set ``name`` afresh from its non-test cases and write it to
    ``preprocessed/NAME/classification_plan.json`` (what ``vesalius plan`` does; training reads it from there).
    Returns the plan and its path."""
    ws = Workspace.resolve(workspace)
    dataset = Dataset.load(ws.dataset_dir(name))
    if dataset.task != "classification":
        raise VesaliusError(f"'{name}' is a {dataset.task} data set", remedy="plan it as a segmentation data set")
    ids = sorted(c.case_id for c in dataset.cases if c.split != "test")
    arrays = dict(zip(ids, _read_arrays(dataset, ids), strict=True))
    plan = classification_plan(dataset, ws, arrays, device, time_budget_s, replan=True)
    return plan, ws.root / "preprocessed" / name / "classification_plan.json"


class _Run:
    """State of one classification run (built by :func:`train_classification`)."""

    def __init__(
        self,
        cfg: ClassificationConfig,
        plan: dict[str, Any],
        net: dict[str, Any],
        data: dict[str, tuple[np.ndarray, np.ndarray]],
        run_dir: Path,
    ) -> None:
        self.cfg = cfg
        self.plan = plan
        self.run_dir = run_dir
        self.target_type: str = plan["target_type"]
        self.num_classes = len(plan["labels"])
        self.x_train, self.y_train = data["train"]
        self.x_val, self.y_val = data["val"]
        self.device = torch.device(cfg.device)
        self.dtype = autocast_dtype(cfg.precision, self.device)
        torch.manual_seed(cfg.seed)
        outputs = num_outputs(self.target_type, self.num_classes)
        self.model = build_classifier(net, plan["spatial_dims"], len(plan["channels"]), outputs).to(self.device)
        if cfg.pretrained:
            load_pretrained(self.model, cfg.pretrained)
        self.memory_format = memory_format(self.dtype, self.device, plan["spatial_dims"])
        self.model = self.model.to(memory_format=self.memory_format)
        if self.dtype is not None and self.device.type == "cpu":
            fp32_small_convolutions(self.model)  # oneDNN's bf16 weight gradients are wrong there (NaN losses)
        lr, decay = float(cfg.lr or 0.0), float(cfg.weight_decay or 0.0)
        if cfg.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                self.model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=decay
            )
        else:
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)
        self.augmenter = Augmenter({**plan["augmentation"], **(cfg.augmentation or {})})
        self.weights = self._class_weights() if cfg.balance == "weights" else None
        self.batch_size = int(cfg.batch_size or 2)
        self.batches_per_epoch = max(1, len(self.x_train) // self.batch_size)  # last partial batch dropped
        self.epoch = 0
        self.iteration = 0
        self.elapsed_s = 0.0
        self.rows: list[dict[str, float]] = []
        self.best_auc = -math.inf
        self.best_loss = math.inf
        self.best_epoch: int | None = None
        self.stale = 0

    # -- state ---------------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "iteration": self.iteration,
            "elapsed_s": self.elapsed_s,
            "rows": self.rows,
            "best_auc": self.best_auc,
            "best_loss": self.best_loss,
            "best_epoch": -1 if self.best_epoch is None else self.best_epoch,
            "stale": self.stale,
            "training": self.cfg.to_dict(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.iteration = int(state["iteration"])
        self.elapsed_s = float(state["elapsed_s"])
        self.rows = list(state["rows"])
        self.best_auc = float(state["best_auc"])
        self.best_loss = float(state["best_loss"])
        self.best_epoch = None if int(state["best_epoch"]) < 0 else int(state["best_epoch"])
        self.stale = int(state["stale"])

    # -- data ----------------------------------------------------------------------------------------------------
    def _class_weights(self) -> torch.Tensor:
        """Inverse-frequency weights ``N / (K n_k)`` per class; multi-label: ``negatives / positives`` per label."""
        y = self.y_train
        if self.target_type == "multilabel":
            positives = y.sum(axis=0)
            weights = (len(y) - positives) / np.maximum(positives, 1)
        else:
            counts = np.bincount(y, minlength=self.num_classes).astype(float)
            weights = np.where(counts > 0, len(y) / (np.count_nonzero(counts) * np.maximum(counts, 1)), 0.0)
        return torch.tensor(weights, dtype=torch.float32, device=self.device)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Indices of the training cases in the order epoch ``epoch`` visits them."""
        rng = np.random.default_rng([self.cfg.seed, epoch, 1])  # distinct from the (seed, iteration) step seeds
        n = len(self.x_train)
        if self.cfg.balance == "sampling" and self.target_type != "multilabel":
            counts = np.bincount(self.y_train, minlength=self.num_classes)
            p = 1.0 / counts[self.y_train]
            return rng.choice(n, size=n, replace=True, p=p / p.sum())
        return rng.permutation(n)

    # -- one step ------------------------------------------------------------------------------------------------
    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The target type's loss of logits ``(B, outputs)`` against targets ``(B,)`` or ``(B, L)``."""
        logits = logits.float()
        if self.target_type == "multilabel":
            return F.binary_cross_entropy_with_logits(logits, y, pos_weight=self.weights)
        if self.target_type == "ordinal":
            thresholds = torch.arange(self.num_classes - 1, device=y.device)
            return F.binary_cross_entropy_with_logits(logits, (y[:, None] > thresholds).float())
        smoothing = float(self.cfg.label_smoothing or 0.0)
        return F.cross_entropy(logits, y, weight=self.weights, label_smoothing=smoothing)

    def train_step(self, index: np.ndarray, lr: float) -> float:
        x = torch.from_numpy(self.x_train[index].astype(np.float32, copy=False)).to(self.device)
        y = torch.from_numpy(self.y_train[index]).to(self.device)
        x, _ = self.augmenter(x, None, step_seed(self.cfg.seed, self.iteration))
        x = x.contiguous(memory_format=self.memory_format)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self._autocast():
            logits = self.model(x)
        loss = self.loss(logits, y)
        if not torch.isfinite(loss):
            self._report_non_finite(loss, x)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), GRADIENT_CLIP)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())

    def _report_non_finite(self, loss: torch.Tensor, x: torch.Tensor) -> None:
        if not torch.isfinite(x).all():
            cause = f"the input batch holds NaN/Inf values: check the images ('vesalius verify {self.cfg.dataset}')"
        else:
            lr = float(self.cfg.lr or 0.0)
            cause = f"the learning rate {lr:g} may be too high for this data (try --lr {lr / 10:g})" + (
                f" or {self.dtype} overflowed (try --precision fp32)" if self.dtype is not None else ""
            )
        raise VesaliusError(
            f"the training loss became {float(loss.detach()):g} at iteration {self.iteration}",
            self.run_dir / "checkpoint_latest.pt",
            f"{cause}; the last complete epoch is saved: continue with --resume",
        )

    # -- validation ----------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def validate(self) -> dict[str, float]:
        """Validation loss, accuracy and AUC (macro over classes or labels; NaN where undefined)."""
        if len(self.x_val) == 0:
            return {}
        from monai.metrics import compute_roc_auc

        self.model.eval()
        logits = []
        for start in range(0, len(self.x_val), self.batch_size):
            x = torch.from_numpy(self.x_val[start : start + self.batch_size].astype(np.float32, copy=False))
            with self._autocast():
                logits.append(self.model(x.to(self.device).contiguous(memory_format=self.memory_format)).float().cpu())
        self.model.train()
        z, y = torch.cat(logits), torch.from_numpy(self.y_val)
        weights, self.weights = self.weights, None  # the validation loss is unweighted
        loss = float(self.loss(z, y))
        self.weights = weights
        p = to_probabilities(z, self.target_type)
        if self.target_type == "multilabel":
            accuracy = float(((p >= 0.5).float() == y).float().mean())
            defined = [j for j in range(y.shape[1]) if 0 < float(y[:, j].sum()) < len(y)]
            auc = float(compute_roc_auc(p[:, defined], y[:, defined])) if defined else float("nan")
        else:
            accuracy = float((p.argmax(1) == y).float().mean())
            present = torch.unique(y)
            if len(present) < 2:
                auc = float("nan")
            elif self.num_classes == 2:
                auc = float(compute_roc_auc(p[:, 1], y))
            else:
                onehot = F.one_hot(y, self.num_classes)
                auc = float(compute_roc_auc(p[:, present], onehot[:, present]))
        return {"val_loss": loss, "val_accuracy": accuracy, "val_auc": auc}


def _raw_arrays(dataset: Dataset, split: dict[str, list[str]], plan_exists: bool) -> dict[str, np.ndarray]:
    """Raw images of the cases the run needs: train and val, plus (to make a plan) every other non-test case."""
    ids = set(split["train"]) | set(split["val"])
    if not plan_exists:
        ids |= {c.case_id for c in dataset.cases if c.split != "test"}
    ordered = sorted(ids)
    return dict(zip(ordered, _read_arrays(dataset, ordered), strict=True))


def train_classification(
    cfg: ClassificationConfig,
    workspace: str | Path | Workspace | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    show_progress: bool = False,
    callbacks: Sequence[EpochCallback] = (),
) -> ClassificationResult:
    """Train a classifier on one split of a classification data set; see the module docstring.

    Args:
        cfg: the settings; ``None`` fields come from the plan.
        workspace: the workspace (default ``$VESALIUS_HOME``).
        resume: continue the run from its ``checkpoint_latest.pt`` with its saved settings (only ``epochs``,
            ``time_budget_s``, ``precision``, ``device`` and ``threads`` may change).
        force: start over in a run folder that already holds a run.
        show_progress: draw a progress bar (loss, validation AUC, time left) on the terminal.
        callbacks: called with each epoch's log row after its checkpoint is written.
    """
    ws = Workspace.resolve(workspace)
    dataset = Dataset.load(ws.dataset_dir(cfg.dataset))
    if dataset.task != "classification":
        raise VesaliusError(
            f"'{cfg.dataset}' is a {dataset.task} data set", remedy="train it without --task classification"
        )
    fold = resolve_fold(cfg.fold, dataset)
    split = classification_split(dataset, fold, ws.root / "preprocessed" / dataset.name / "classification_splits.json")
    plan_path = ws.root / "preprocessed" / dataset.name / "classification_plan.json"
    arrays = _raw_arrays(dataset, split, plan_path.is_file())
    plan = classification_plan(dataset, ws, arrays, cfg.device, cfg.time_budget_s)
    run_dir = ws.run_dir(cfg.dataset, cfg.network or plan["network"]["name"], fold)
    if resume:
        cfg = resumed_config(cfg, run_dir, RESUMABLE)
        plan = json.loads((run_dir / "plan.json").read_text())
    check_run_folder(run_dir, resume=resume, force=force)
    cfg = cfg.resolve(plan, fold)
    net = _network_entry(plan, str(cfg.network))
    torch.set_num_threads(cfg.threads or len(os.sched_getaffinity(0)))
    data = {
        part: (prepare_images([arrays[c] for c in split[part]], plan), encode_targets(dataset, split[part]))
        for part in ("train", "val")
    }
    del arrays
    if len(data["train"][0]) < 2:
        raise VesaliusError(f"{len(data['train'][0])} training case(s)", remedy="a classifier needs at least 2")
    state = open_run_folder(run_dir, resume=resume)
    run = _Run(cfg, plan, net, data, run_dir)
    if state is not None:
        run.load_state(state)
    write_json_atomic(run_dir / "plan.json", plan)
    write_json_atomic(
        run_dir / "training.json",
        {
            "task": "classification",
            "training": cfg.to_dict(),
            "network": net,
            "split": split,
            "versions": {"torch": torch.__version__},
        },
    )
    log = TrainingLog(run_dir, [], run.rows, metrics=("val_auc", "val_accuracy"))
    try:
        stopped = _loop(run, log, show_progress, callbacks)
    finally:
        log.close()
    best = run_dir / "checkpoint_best.pt"
    final = load_checkpoint(best)["model"] if best.exists() else run.model.state_dict()
    save_checkpoint(run_dir / "checkpoint_final.pt", {"model": final, "training": cfg.to_dict()})
    return ClassificationResult(
        run_dir=run_dir,
        epochs=run.epoch,
        iterations=run.iteration,
        elapsed_s=run.elapsed_s,
        best_epoch=run.best_epoch,
        best_auc=run.best_auc if run.best_epoch is not None else float("nan"),
        stopped=stopped,
    )


def _network_entry(plan: dict[str, Any], name: str) -> dict[str, Any]:
    """The plan's network entry, or for another architecture the entry the plan's rules give it."""
    if name == plan["network"]["name"]:
        return dict(plan["network"])
    rules = load_classification_rules()
    dims = plan["spatial_dims"]
    rules["network"] = {**rules["network"], f"{dims}d": name}
    return network(list(plan["input_size"]), dims, plan["budget"]["device"], rules)


def _loop(run: _Run, log: TrainingLog, show_progress: bool, callbacks: Sequence[EpochCallback]) -> str:
    """Train until the epochs, the time budget or the patience run out; returns which."""
    cfg = run.cfg
    epochs, budget, patience = int(cfg.epochs or 1), cfg.time_budget_s, int(cfg.early_stopping or 0)
    total = epochs * run.batches_per_epoch
    bar = ProgressBar(total, budget, enabled=show_progress, metric="val_auc", metric_label="AUC")
    bar.update(run.iteration, run.elapsed_s, run.rows[-1] if run.rows else {})
    stopped = "epochs"
    with bar:
        while run.epoch < epochs:
            if budget and run.elapsed_s >= budget:
                stopped = "time budget"
                break
            if patience and run.stale >= patience and len(run.x_val):
                stopped = "early stopping"
                break
            start, elapsed0 = time.perf_counter(), run.elapsed_s
            order = run.epoch_order(run.epoch)
            losses: list[float] = []
            lr = float(cfg.lr or 0.0)
            for b in range(run.batches_per_epoch):
                elapsed = elapsed0 + time.perf_counter() - start
                if budget and elapsed >= budget:
                    break
                lr = learning_rate(
                    float(cfg.lr or 0.0), progress(run.iteration, total, elapsed, budget), str(cfg.schedule)
                )
                losses.append(run.train_step(order[b * run.batch_size : (b + 1) * run.batch_size], lr))
                run.iteration += 1
                run.elapsed_s = elapsed0 + time.perf_counter() - start
                bar.update(run.iteration, run.elapsed_s, {"train_loss": losses[-1]})
            row: dict[str, float] = {
                "epoch": run.epoch,
                "iteration": run.iteration,
                "elapsed_s": 0.0,
                "lr": lr,
                "train_loss": float(np.mean(losses)) if losses else float("nan"),
            }
            row.update(run.validate())
            run.elapsed_s = elapsed0 + time.perf_counter() - start
            row["elapsed_s"] = round(run.elapsed_s, 3)
            auc, loss = row.get("val_auc", float("nan")), row.get("val_loss", math.inf)
            if not math.isnan(auc) and (auc > run.best_auc or (auc == run.best_auc and loss < run.best_loss)):
                run.best_auc, run.best_loss, run.best_epoch, run.stale = auc, loss, run.epoch, 0
                save_checkpoint(run.run_dir / "checkpoint_best.pt", {"model": run.model.state_dict()})
            else:
                run.stale += 1
            run.epoch += 1
            run.rows.append(row)
            log.add(row)
            save_checkpoint(run.run_dir / "checkpoint_latest.pt", run.state())
            bar.update(run.iteration, run.elapsed_s, row)
            for callback in callbacks:
                callback(row)
    return stopped
