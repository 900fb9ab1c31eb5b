"""Classification training: a planned classifier on one split of a classification data set, to a trained model.

The run: the data set's cases of the split (:func:`vesalius.data.splits.classification_split`) are read once,
normalised and resized to the plan's input (:mod:`vesalius.preprocessing.classification`) and kept in memory.
Each epoch visits the training cases in an order drawn from ``(seed, epoch)`` (or, with ``balance="sampling"``, as
many cases drawn with equal class probability); each batch is augmented on the device with the plan's settings
(:class:`vesalius.augmentation.Augmenter`, seeded by ``(seed, iteration)``) and takes one step on the loss of the
target type: cross-entropy (binary, multi-class; class weights with ``balance="weights"``, label smoothing),
binary cross-entropy per label (multi-label; positive weights with ``balance="weights"``), or binary
cross-entropy on the cumulative targets ``y > k`` (ordinal).

After each epoch: validation loss, accuracy and AUC (:mod:`vesalius.metrics.classification`; macro over classes
or labels). The best epoch has the highest validation AUC (on equal AUC, the lowest validation loss); training
stops early after ``early_stopping`` epochs without a better one, and ``checkpoint_final.pt`` holds the best
epoch's weights (the last epoch's without validation cases). The loop itself (optimiser, precision, checkpoints,
resume, logs, budget) is :class:`vesalius.training.loop.TrainingLoop`.

The plan is the workspace's classification plan, made on first use from the data set's non-test cases
(:func:`vesalius.planning.classification.classification_plan`; edit it to change the defaults). The run saves
its trained configuration (:class:`vesalius.model_package.TrainedClassification`).

Under ``torchrun`` (or ``vesalius train --nproc N``) the run spreads over the processes
(:mod:`vesalius.training.distributed`): each takes its rows of every batch and of the validation cases, whose
outputs are gathered before the figures. Batch normalisation normalises each rank's rows (DDP's default), so the
steps are not exactly those of one process.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vesalius.augmentation.transforms import Augmenter
from vesalius.data.dataset import Dataset
from vesalius.data.splits import classification_split, resolve_classification_fold
from vesalius.data.targets import encode_targets
from vesalius.errors import VesaliusError
from vesalius.metrics.classification import binary_auc, roc_auc
from vesalius.model_package import ModelPackage, TrainedClassification, versions
from vesalius.models.classifiers import build_classifier, load_pretrained, num_outputs, to_probabilities
from vesalius.planning.classification import (
    classification_plan,
    load_classification_rules,
    network,
    planning_case_ids,
    read_case_arrays,
)
from vesalius.planning.plan import ClassificationPlan, ClassifierNetwork
from vesalius.preprocessing.classification import prepare_images
from vesalius.training.distributed import Distributed
from vesalius.training.loop import EpochCallback, TaskHead, TrainingLoop, TrainingResult
from vesalius.training.settings import ClassificationSettings, resumed_settings
from vesalius.workspace import Workspace

__all__ = ["ClassificationHead", "train_classification"]


class ClassificationHead(TaskHead):
    """Whole images in memory, the target type's loss, and validation loss, accuracy and AUC."""

    gradient_clip = 5.0
    sgd_momentum = 0.9
    final = "best"
    progress_metric = "val_auc"
    progress_label = "AUC"
    log_metrics = ("val_auc", "val_accuracy")

    def __init__(
        self,
        trained: TrainedClassification,
        plan: ClassificationPlan,
        settings: ClassificationSettings,
        data: dict[str, tuple[np.ndarray, np.ndarray]],
        distributed: Distributed = Distributed(),
    ) -> None:
        self.trained = trained
        self.distributed = distributed
        self.settings = settings
        self.dataset = settings.dataset
        self.spatial_dims = trained.spatial_dims
        self.target_type = trained.target_type
        self.num_classes = len(trained.labels)
        self.x_train, self.y_train = data["train"]
        self.x_val, self.y_val = data["val"]
        self.augmenter = Augmenter({**plan.augmentation, **(settings.augmentation or {})})
        self.device = distributed.device(settings.device)
        self.weights = self._class_weights() if settings.balance == "weights" else None
        self.batch_size = int(settings.batch_size or 2)
        self.rows = distributed.rows(self.batch_size)
        self.iterations_per_epoch = max(1, len(self.x_train) // self.batch_size)  # last partial batch dropped
        self.order = np.arange(len(self.x_train))
        self.best_auc = -math.inf
        self.best_loss = math.inf
        self.stale = 0

    def build_model(self) -> nn.Module:
        trained = self.trained
        outputs = num_outputs(trained.target_type, self.num_classes)
        model = build_classifier(trained.network, trained.spatial_dims, len(trained.channels), outputs)
        if self.settings.pretrained:
            load_pretrained(model, self.settings.pretrained)
        return model

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

    def start_epoch(self, epoch: int) -> None:
        """Draw the order in which epoch ``epoch`` visits the training cases."""
        rng = np.random.default_rng([self.settings.seed, epoch, 1])  # distinct from the (seed, iteration) step seeds
        n = len(self.x_train)
        if self.settings.balance == "sampling" and self.target_type != "multilabel":
            counts = np.bincount(self.y_train, minlength=self.num_classes)
            p = 1.0 / counts[self.y_train]
            self.order = rng.choice(n, size=n, replace=True, p=p / p.sum())
        else:
            self.order = rng.permutation(n)

    def batch(self, iteration: int, step: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.order[step * self.batch_size : (step + 1) * self.batch_size][self.rows]
        x = torch.from_numpy(self.x_train[index].astype(np.float32, copy=False)).to(device)
        y = torch.from_numpy(self.y_train[index]).to(device)
        x, _ = self.augmenter(x, None, self.distributed.augmentation_seed(self.settings.seed, iteration))
        return x, y

    def _loss(self, logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        logits = logits.float()
        if self.target_type == "multilabel":
            return F.binary_cross_entropy_with_logits(logits, y, pos_weight=weights)
        if self.target_type == "ordinal":
            thresholds = torch.arange(self.num_classes - 1, device=y.device)
            return F.binary_cross_entropy_with_logits(logits, (y[:, None] > thresholds).float())
        smoothing = float(self.settings.label_smoothing or 0.0)
        return F.cross_entropy(logits, y, weight=weights, label_smoothing=smoothing)

    def loss(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        """The target type's loss of logits ``(B, outputs)`` against targets ``(B,)`` or ``(B, L)``."""
        return self._loss(outputs, targets, self.weights)

    def validate(self, forward: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> dict[str, float]:
        """Validation loss (unweighted), accuracy and AUC (macro over classes or labels; NaN where undefined).

        The ranks share the batches of validation cases; their outputs are summed into one array (zeros where
        another rank's rows are), so every rank computes the figures of all cases."""
        if len(self.x_val) == 0:
            return {}
        z = torch.zeros(len(self.x_val), num_outputs(self.target_type, self.num_classes), dtype=torch.float64)
        for start in self.distributed.share(range(0, len(self.x_val), self.batch_size)):
            x = torch.from_numpy(self.x_val[start : start + self.batch_size].astype(np.float32, copy=False))
            z[start : start + len(x)] = forward(x.to(device)).double().cpu()
        z, y = self.distributed.sum(z).float(), torch.from_numpy(self.y_val)
        loss = float(self._loss(z, y, None))
        p = to_probabilities(z, self.target_type)
        if self.target_type == "multilabel":
            accuracy = float(((p >= 0.5).float() == y).float().mean())
            aucs = [binary_auc(self.y_val[:, j] > 0.5, p[:, j].numpy()) for j in range(self.y_val.shape[1])]
            defined = [a for a in aucs if not math.isnan(a)]
            auc = float(np.mean(defined)) if defined else float("nan")
        else:
            accuracy = float((p.argmax(1) == y).float().mean())
            auc = roc_auc(self.y_val, p.numpy().astype(np.float64))
        return {"val_loss": loss, "val_accuracy": accuracy, "val_auc": auc}

    def judge(self, row: dict[str, float]) -> bool:
        """Best when the validation AUC improves (on equal AUC, when the validation loss falls)."""
        auc, loss = row.get("val_auc", float("nan")), row.get("val_loss", math.inf)
        if not math.isnan(auc) and (auc > self.best_auc or (auc == self.best_auc and loss < self.best_loss)):
            self.best_auc, self.best_loss, self.stale = auc, loss, 0
            return True
        self.stale += 1
        return False

    def stop_reason(self) -> str | None:
        patience = int(self.settings.early_stopping or 0)
        return "early stopping" if patience and self.stale >= patience and len(self.x_val) else None

    def best_score(self) -> float:
        return self.best_auc if self.best_auc > -math.inf else float("nan")

    def state(self) -> dict[str, Any]:
        return {"best_auc": self.best_auc, "best_loss": self.best_loss, "stale": self.stale}

    def load_state(self, state: dict[str, Any]) -> None:
        self.best_auc = float(state["best_auc"])
        self.best_loss = float(state["best_loss"])
        self.stale = int(state["stale"])


def _network(plan: ClassificationPlan, name: str) -> ClassifierNetwork:
    """The plan's network, or for another architecture the entry the plan's rules give it."""
    if name == plan.network.name:
        return plan.network
    rules = load_classification_rules()
    dims = plan.spatial_dims
    rules["network"] = {**rules["network"], f"{dims}d": name}
    return ClassifierNetwork(**network(list(plan.input_size), dims, plan.budget.device, rules))


def train_classification(
    settings: ClassificationSettings,
    workspace: str | Path | Workspace | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    show_progress: bool = False,
    callbacks: Sequence[EpochCallback] = (),
) -> TrainingResult:
    """Train a classifier on one split of a classification data set; see the module docstring.

    Args:
        settings: the settings; ``None`` fields come from the plan.
        workspace: the workspace (default ``$VESALIUS_HOME``).
        resume: continue the run from its ``checkpoint_latest.pt`` with its saved settings (only
            :attr:`ClassificationSettings.RESUMABLE` may change).
        force: start over in a run folder that already holds a run.
        show_progress: draw a progress bar (loss, validation AUC, time left) on the terminal.
        callbacks: called with each epoch's log row after its checkpoint is written.
    """
    distributed = Distributed.from_environment()
    with distributed.session(settings.device):
        return _train(settings, Workspace.resolve(workspace), distributed, resume, force, show_progress, callbacks)


def _train(
    settings: ClassificationSettings,
    ws: Workspace,
    distributed: Distributed,
    resume: bool,
    force: bool,
    show_progress: bool,
    callbacks: Sequence[EpochCallback],
) -> TrainingResult:
    """:func:`train_classification` in one process of the run (rank 0 plans and writes first)."""
    with distributed.writer_first():
        package, plan, settings, trained, split, arrays = _prepare(settings, ws, distributed, resume)
        state = package.prepare(resume=resume, force=force) if distributed.is_writer or resume else None
    torch.set_num_threads(distributed.threads(settings.threads))
    dataset = Dataset.load(ws.dataset_dir(settings.dataset))
    data = {
        part: (
            prepare_images([arrays[c] for c in split[part]], trained.normalization, trained.input_size),
            encode_targets(dataset, split[part]),
        )
        for part in ("train", "val")
    }
    del arrays
    if len(data["train"][0]) < 2:
        raise VesaliusError(f"{len(data['train'][0])} training case(s)", remedy="a classifier needs at least 2")
    head = ClassificationHead(trained, plan, settings, data, distributed)
    loop = TrainingLoop(head, settings, package, state)
    if distributed.is_writer:
        fingerprint = ws.classification_fingerprint_path(dataset.name)
        package.write_setup(plan, trained, settings.to_dict(), split, fingerprint)
    return loop.run(show_progress, callbacks)


def _prepare(
    settings: ClassificationSettings, ws: Workspace, distributed: Distributed, resume: bool
) -> tuple[
    ModelPackage,
    ClassificationPlan,
    ClassificationSettings,
    TrainedClassification,
    dict[str, list[str]],
    dict[str, np.ndarray],
]:
    """The run's folder, plan (made on first use), resolved settings, trained configuration, split and case
    arrays; bad settings are refused before the run folder is touched."""
    dataset = Dataset.load(ws.dataset_dir(settings.dataset))
    if dataset.task != "classification":
        raise VesaliusError(
            f"'{settings.dataset}' is a {dataset.task} data set", remedy="train it without --task classification"
        )
    fold = resolve_classification_fold(settings.fold, dataset)
    split = classification_split(dataset, fold, ws.classification_splits_path(dataset.name))
    planned = ws.classification_plan_path(dataset.name).is_file()
    ids = sorted(set(split["train"]) | set(split["val"]) | (set() if planned else set(planning_case_ids(dataset))))
    arrays = read_case_arrays(dataset, ids)
    plan = classification_plan(dataset, ws, arrays, settings.device, settings.time_budget_s)
    package = ModelPackage(ws.run_dir(settings.dataset, settings.network or plan.network.name, fold))
    if resume:
        settings = resumed_settings(settings, package.saved_settings())  # type: ignore[assignment]
        plan = package.plan  # type: ignore[assignment]
    settings = settings.resolve(plan, fold)  # type: ignore[arg-type]
    trained = TrainedClassification(
        dataset=plan.dataset,
        channels=plan.channels,
        labels=dict(plan.labels),
        spatial_dims=plan.spatial_dims,
        target_type=plan.target_type,
        input_size=plan.input_size,
        normalization=plan.normalization,
        network=_network(plan, str(settings.network)),
        precision=settings.precision,  # type: ignore[arg-type]
        versions=versions(),
    )
    if settings.pretrained:  # a wrong file is found before the run folder is touched
        load_pretrained(
            build_classifier(trained.network, trained.spatial_dims, len(trained.channels), 2), settings.pretrained
        )
    distributed.rows(int(settings.batch_size or 2))  # a batch that does not split: refused before any work
    return package, plan, settings, trained, split, arrays
