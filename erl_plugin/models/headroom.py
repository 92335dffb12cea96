"""Can the feature loss help? The entanglement headroom, measured before stage II trains.

ERL-Net's premise (Sec. 3.3) is that the decoder, given the embedding of the *clean* image, produces
a near-perfect image, so pulling the rainy image's embedding towards it is worth something. This
module measures that premise on a validation set, with the networks as they stand:

- ``student``: the frozen decoder given the student's embedding ``Phi(x_r) (+ R(x_r))`` (what ERL-Net
  outputs now);
- ``target``: the same decoder given the teacher's embedding of the clean image at every entanglement
  point (the other points keep the student's features);
- ``midpoint``: given the average of the two, a step half-way along the path the feature loss takes;
- ``teacher`` / ``teacher_without_features``: the teacher's own clean-to-clean PSNR (through the
  decoder it is trained with), and the same with its features zeroed. A teacher that scores as well
  without its features ignores them: its target says nothing about the clean image.

A target that does not beat the student by a clear margin means the feature loss cannot help, however
long stage II trains. Scores are PSNR under the ``basicsr`` protocol (Y channel, no border crop).

Given the two losses, it also measures the size of the gradients that the pixel loss and the feature loss
(per unit ``lambda_fre``) put on the residual encoder's branch: their ratio is the ``lambda_fre`` at which
the two pull on that branch with the same strength.
"""

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from basicsr.utils import tensor2img
from torch import Tensor, nn

from erl_plugin.metrics.protocols import psnr

PROTOCOL = "basicsr"
MIN_MARGIN_DB = 1.0
"""The gain of ``target`` over ``student`` below which the headroom report says the feature loss cannot help."""


@dataclass(frozen=True)
class Headroom:
    """Mean PSNR (dB, ``basicsr``) of each decoding over a validation set; see the module docstring."""

    dataset: str
    images: int
    rainy: float
    student: float
    midpoint: float
    target: float
    teacher: float
    teacher_without_features: float
    pixel_gradient: float | None = None
    """Mean norm of the pixel loss's gradient on the residual encoder's branch (None: not measured)."""
    feature_gradient: float | None = None
    """The same for the feature loss with ``lambda_fre`` = 1."""

    @property
    def balanced_lambda(self) -> float | None:
        """The ``lambda_fre`` whose feature gradient equals the pixel one on the residual encoder."""
        if self.pixel_gradient is None or not self.feature_gradient:
            return None
        return self.pixel_gradient / self.feature_gradient

    @property
    def margin(self) -> float:
        """How much the decoder gains from the target over the student's own embedding."""
        return self.target - self.student

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "margin": self.margin, "balanced_lambda": self.balanced_lambda, "protocol": PROTOCOL}

    def report(self, min_margin: float = MIN_MARGIN_DB) -> str:
        """One line of figures and, when the margin is short of ``min_margin``, what that means."""
        line = (
            f"Headroom on {self.dataset} ({self.images} images, PSNR dB, {PROTOCOL} protocol): the frozen decoder "
            f"given the student's embedding {self.student:.2f}, the midpoint {self.midpoint:.2f}, the teacher's "
            f"target {self.target:.2f} ({self.margin:+.2f} over the student); the teacher clean to clean "
            f"{self.teacher:.2f}, {self.teacher_without_features:.2f} with its features zeroed; rainy input "
            f"{self.rainy:.2f}"
        )
        if self.balanced_lambda is not None:
            line += (
                f"; gradient on the residual encoder: pixel loss {self.pixel_gradient:.3g}, feature loss "
                f"{self.feature_gradient:.3g} per unit lambda_fre (equal at lambda_fre {self.balanced_lambda:.3g})"
            )
        if self.margin < min_margin:
            line += (
                f". The target does not beat the student by {min_margin:g} dB: pulling the features towards it "
                "cannot improve the output (the feature loss has nothing to give here)"
            )
        return line


def _score(output: Tensor, clean: Tensor) -> float:
    return psnr(tensor2img(output.float().clamp(0, 1)), tensor2img(clean), PROTOCOL)


def _gradient_norms(
    net_g: nn.Module, rainy: Tensor, clean: Tensor, targets: list[Tensor], losses: tuple[nn.Module, nn.Module]
) -> tuple[float, float]:
    """Norms of the pixel loss's and the (unweighted) feature loss's gradients on the residual encoder's branch."""
    params = list(net_g.branch_parameters("residual_encoder"))
    flags = [p.requires_grad for p in params]
    pixel_loss, feature_loss = losses
    try:
        for param in params:
            param.requires_grad_(True)
        with torch.enable_grad():
            output, features = net_g(rainy, return_features=True)
            per_lambda = feature_loss(features, targets) / feature_loss.loss_weight
            norms = []
            for loss in (pixel_loss(output, clean), per_lambda):
                grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
                norms.append(float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None))))
    finally:
        for param, flag in zip(params, flags, strict=True):
            param.requires_grad_(flag)
    return norms[0], norms[1]


@torch.no_grad()
def measure_headroom(
    net_g: nn.Module,
    teacher: nn.Module,
    pairs: Iterable[tuple[Tensor, Tensor]],
    aligned: bool,
    dataset: str = "val",
    losses: tuple[nn.Module, nn.Module] | None = None,
) -> Headroom:
    """The headroom of :mod:`this module <erl_plugin.models.headroom>` over ``(rainy, clean)`` pairs.

    Args:
        net_g: The ERLNet (its backbone's decoder is the one that decodes every embedding).
        teacher: The clean-to-clean network (the backbone's structure).
        pairs: ``(rainy, clean)`` images, each ``(1, C, H, W)`` in [0, 1], on the networks' device.
        aligned: Whether the teacher is trained through ``net_g``'s decoder (``teacher_mode: aligned``).
        dataset: The set's name, for the report.
        losses: ``(pixel_loss, feature_loss)``: also measure their gradients on the residual encoder.
    """
    backbone = net_g.backbone
    teacher_decoder = backbone if aligned else teacher
    was_training = net_g.training, teacher.training
    net_g.eval()
    teacher.eval()
    sums = np.zeros(8)
    count = 0
    try:
        for rainy, clean in pairs:
            _, entangled = net_g(rainy, return_features=True)
            bottleneck, skips = backbone.encode(rainy)
            student = [*skips, bottleneck]
            for slot, index in enumerate(net_g.entangled_points):
                student[index] = entangled[slot]
            t_bottleneck, t_skips = teacher.encode(clean)
            target = list(student)
            for index in net_g.entangled_points:
                target[index] = [*t_skips, t_bottleneck][index]
            midpoint = [(a + b) / 2 for a, b in zip(student, target, strict=True)]
            outputs = [backbone.decode(f[-1], f[:-1], rainy) for f in (student, midpoint, target)]
            outputs.append(teacher_decoder.decode(t_bottleneck, t_skips, clean))
            zeros = [torch.zeros_like(f) for f in t_skips]
            outputs.append(teacher_decoder.decode(torch.zeros_like(t_bottleneck), zeros, clean))
            gradients = (np.nan, np.nan)
            if losses is not None:
                targets = [[*t_skips, t_bottleneck][index] for index in net_g.entangled_points]
                gradients = _gradient_norms(net_g, rainy, clean, targets, losses)
            sums += [_score(rainy, clean), *(_score(out, clean) for out in outputs), *gradients]
            count += 1
    finally:
        net_g.train(was_training[0])
        teacher.train(was_training[1])
    if count == 0:
        raise ValueError(f"headroom: the set {dataset!r} has no images")
    means = [float(v) for v in sums / count]
    gradients = means[6:] if losses is not None else [None, None]
    return Headroom(dataset, count, *means[:6], *gradients)
