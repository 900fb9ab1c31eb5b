"""Adversarial training of a segmentation network: a discriminator as a training aid (``--adversarial WEIGHT``).

A PatchGAN discriminator (MONAI's :class:`~monai.networks.nets.PatchDiscriminator`) judges pairs of an image patch
and a label map, ``concat(image (B, C, *patch), probabilities (B, K, *patch))``, one score per receptive field
(``(B, 1, *grid)``): real pairs hold the one-hot reference label, fake ones the network's softmax probabilities.
Each training iteration of :class:`~vesalius.training.loop.TrainingLoop`:

1. :meth:`Adversary.generator_loss`: after the warm-up (the first ``adversarial_warmup`` of the run's iterations),
   the network's loss gains ``adversarial * L_G``, ``L_G`` the least-squares loss of its prediction judged as real
   by the current discriminator (whose weights take no gradient from it);
2. the loop's step of the network;
3. :meth:`Adversary.discriminator_step`: one step of the discriminator (its own Adam, betas (0.5, 0.999), learning
   rate ``adversarial_lr`` following the run's schedule, so that it does not overpower a network whose rate has
   decayed) on the step's real pairs and its prediction, detached, in one batch (instance normalisation keeps the
   samples apart). The discriminator trains during the warm-up too, so that it already tells predictions from
   references when its term starts; it is stepped after the network because the network's backward pass needs the
   weights its forward pass used.

Least squares (LSGAN: MONAI's :class:`~monai.losses.PatchAdversarialLoss`, targets 1 and 0, no output activation)
rather than the non-saturating cross-entropy: the discriminator soon tells soft probabilities from one-hot
references with confidence, where the cross-entropy's gradient for the generator fades while the squared distance
to the "real" target keeps a gradient proportional to how far off the score is, and its losses are bounded, which
keeps a rarely tuned weight safe.

With deep supervision the network's outputs are a list, highest resolution first: only the full-resolution output
is judged. The discriminator runs in the run's precision (autocast, ``channels_last`` for bf16 on CPUs) with losses
in fp32. Its weights, optimiser, gradient scaler and the figures of the epoch in progress are part of the run's
``checkpoint_latest.pt`` (:meth:`Adversary.state`), so a resumed run continues exactly; it draws no random numbers
after its initialisation, which uses its own seed and leaves torch's global generator as it found it (runs with and
without adversarial training train the same network until the warm-up ends). The discriminator is never part of
the trained model: ``checkpoint_final.pt``, ``checkpoint_best.pt``, the exported package and prediction hold the
segmentation network alone.

Per step it records :data:`COLUMNS` (means per epoch in ``log.csv``, per point in ``log_iterations.csv``):
``adv_d_loss`` (the discriminator's loss, the mean of its real and fake halves; 0.25 for one that scores every
patch 0.5), ``adv_g_loss`` (``L_G`` as that step's discriminator judged the prediction: the term
added, before its weight, once the warm-up is over), ``adv_d_real`` and ``adv_d_fake`` (fraction of real and of
fake patch scores on the right side of 0.5).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from vesalius.errors import VesaliusError
from vesalius.precision import fp32_small_convolutions, memory_format
from vesalius.training.schedule import learning_rate

__all__ = ["COLUMNS", "Adversary", "discriminator_layers"]

#: The per-step figures of adversarial training, in the order of the logs' columns.
COLUMNS = ("adv_d_loss", "adv_g_loss", "adv_d_real", "adv_d_fake")
#: At most this many strided layers: PatchGAN's 70-pixel receptive field in 2D.
MAX_LAYERS = 3
#: The score grid keeps at least this many cells along each axis before the two stride-1 convolutions.
MIN_GRID = 3


def discriminator_layers(patch_size: Sequence[int]) -> int:
    """The depth (``num_layers_d``) of the PatchGAN for ``patch_size``: :data:`MAX_LAYERS`, or fewer where the
    thinnest axis would leave too small a score grid.

    The discriminator halves every axis ``num_layers_d`` times (kernel 4, stride 2, padding 1), then two stride-1
    convolutions of kernel 4 take one cell each: each axis needs ``patch // 2**layers >= 3``. Its strides are the
    same along every axis, so an anisotropic patch (e.g. 20 x 320 x 256) gets the depth its thinnest axis allows.
    """
    thinnest = min(patch_size)
    layers = MAX_LAYERS
    while layers > 0 and thinnest // 2**layers < MIN_GRID:
        layers -= 1
    if layers == 0:
        raise VesaliusError(
            f"the patch {list(patch_size)} is too thin for the adversarial discriminator (an axis of "
            f"{thinnest} voxels; it needs {MIN_GRID * 2} or more)",
            remedy="give a larger --patch-size or train without --adversarial",
        )
    return layers


class Adversary:
    """The discriminator, its optimiser and its figures, for one run (see the module docstring).

    Args:
        spatial_dims: 2 or 3; ``patch_size``: the training patch (it sets the discriminator's depth).
        image_channels: the image's channels ``C``; ``num_classes``: the label's classes ``K`` (background
            included); the discriminator reads ``C + K`` channels.
        features: the discriminator's first layer's feature maps (doubled per layer).
        weight: the weight of the generator's adversarial term; ``warmup``: the fraction of the run's iterations
            before it starts; ``lr``: the discriminator's initial learning rate, following ``schedule``.
        seed: seeds the discriminator's initial weights (torch's global generator is left as it was).
        device, dtype: where it runs, and the autocast dtype (``None``: fp32), as the network.
    """

    def __init__(
        self,
        *,
        spatial_dims: int,
        patch_size: Sequence[int],
        image_channels: int,
        num_classes: int,
        features: int,
        weight: float,
        warmup: float,
        lr: float,
        schedule: str,
        seed: int,
        device: torch.device,
        dtype: torch.dtype | None,
    ) -> None:
        from monai.losses import PatchAdversarialLoss
        from monai.networks.nets import PatchDiscriminator

        self.num_classes = num_classes
        self.weight, self.warmup, self.lr, self.schedule = weight, warmup, lr, schedule
        self.device, self.dtype = device, dtype
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(np.random.SeedSequence((seed, 1)).generate_state(1)[0]))
            network = PatchDiscriminator(
                spatial_dims=spatial_dims,
                channels=features,
                in_channels=image_channels + num_classes,
                num_layers_d=discriminator_layers(patch_size),
                norm="INSTANCE",  # per sample: real and fake pairs share a batch without telling on each other
            )
        self.memory_format = memory_format(dtype, device, spatial_dims)
        self.network = network.to(device).to(memory_format=self.memory_format)
        if dtype is not None and device.type == "cpu":
            fp32_small_convolutions(self.network)  # as the network's: oneDNN's bf16 gradients of tiny maps
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=lr, betas=(0.5, 0.999))
        self.scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
        self.criterion = PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True)
        self.figures: dict[str, list[float]] = {key: [] for key in COLUMNS}

    # -- the two steps -------------------------------------------------------------------------------------------
    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def _scores(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The discriminator's patch scores ``(B, 1, *grid)`` (fp32) of the pairs ``images (B, C, *patch)``,
        ``labels (B, K, *patch)``."""
        pairs = torch.cat([images.float(), labels.float()], dim=1).contiguous(memory_format=self.memory_format)
        with self._autocast():
            return self.network(pairs)[-1].float()

    @staticmethod
    def _probabilities(outputs: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """The softmax ``(B, K, *patch)`` (fp32) of the network's full-resolution logits (the first of a deep
        supervision list)."""
        logits = outputs[0] if isinstance(outputs, list) else outputs
        return logits.float().softmax(dim=1)

    def generator_loss(
        self, images: torch.Tensor, outputs: torch.Tensor | list[torch.Tensor], progress: float
    ) -> torch.Tensor | None:
        """The weighted adversarial term of the network's loss (fp32 scalar, with a graph into the network), or
        ``None`` during the warm-up (``progress``: the fraction of the run's iterations done).

        The discriminator's weights take no gradient from it (its parameters are frozen for this forward pass).
        """
        if self.weight <= 0 or progress < self.warmup:
            return None
        self.network.requires_grad_(False)
        try:
            scores = self._scores(images, self._probabilities(outputs))
        finally:
            self.network.requires_grad_(True)
        return self.weight * self.criterion(scores, target_is_real=True, for_discriminator=False)

    def discriminator_step(
        self,
        images: torch.Tensor,
        outputs: torch.Tensor | list[torch.Tensor],
        targets: torch.Tensor,
        progress: float,
        iteration: int,
    ) -> None:
        """One step of the discriminator on the real pairs (``targets (B, 1, *patch)``, one-hot) and the fake ones
        (the prediction ``outputs``, detached), in one batch; records the step's :data:`COLUMNS`.

        Raises :class:`VesaliusError` when its loss is not finite (before any checkpoint could save the weights).
        """
        batch = images.shape[0]
        real = nn.functional.one_hot(targets[:, 0].long(), self.num_classes).movedim(-1, 1)
        fake = self._probabilities(outputs).detach()
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.lr, progress, self.schedule)
        scores = self._scores(torch.cat([images, images]), torch.cat([real.float(), fake]))
        real_scores, fake_scores = scores[:batch], scores[batch:]
        loss_real = self.criterion(real_scores, target_is_real=True, for_discriminator=True)
        loss_fake = self.criterion(fake_scores, target_is_real=False, for_discriminator=True)
        loss = 0.5 * (loss_real + loss_fake)
        if not torch.isfinite(loss):
            raise VesaliusError(
                f"the adversarial discriminator's loss became {float(loss.detach()):g} at iteration {iteration}",
                remedy=f"lower --adversarial-lr (now {self.lr:g}) or train with --precision fp32; the last "
                "complete epoch is saved: continue with --resume",
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with torch.no_grad():
            values = (
                loss.detach(),
                self.criterion(fake_scores, target_is_real=True, for_discriminator=False),
                (real_scores > 0.5).float().mean(),
                (fake_scores < 0.5).float().mean(),
            )
        for key, value in zip(COLUMNS, values, strict=True):
            self.figures[key].append(float(value))

    # -- figures and state ---------------------------------------------------------------------------------------
    def new_epoch(self) -> None:
        """Forget the figures of the previous epoch."""
        self.figures = {key: [] for key in COLUMNS}

    def means(self, steps: int | None = None) -> dict[str, float]:
        """The mean of each of :data:`COLUMNS` over the epoch's last ``steps`` steps (``None``: all of them; NaN
        before any)."""
        return {
            key: float(np.mean(values[-steps:] if steps is not None else values)) if values else float("nan")
            for key, values in self.figures.items()
        }

    def state(self) -> dict[str, Any]:
        """Everything a resumed run needs: weights, optimiser, gradient scaler and the epoch's figures."""
        return {
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "figures": {key: list(values) for key, values in self.figures.items()},
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state`."""
        self.network.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.figures = {key: [float(v) for v in state["figures"][key]] for key in COLUMNS}
