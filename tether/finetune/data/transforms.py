"""Per-batch image preparation on the training device: uint8 to float, augmentation, norm."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tether.finetune.data.config import DataConfig


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_SCALE = (0.5, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_ATTEMPTS = 10


class BatchTransform:
    """Turn a uint8 batch ``[B, 3, H, W]`` (any device) into the network's float32 input.

    1. ``x / 255``, float32 in ``[0, 1]``.
    2. If ``cfg.augment`` and ``train`` (the RSL protocol, Li & Zhang, NeurIPS 2021; off in
       MARS-PGM): a per-sample random resized crop back to ``image_size`` x ``image_size``
       (area scale ``(0.5, 1.0)``, aspect ratio ``(3/4, 4/3)``, torchvision's
       ``RandomResizedCrop`` sampling with 10 attempts then the whole image) and a horizontal flip
       with p = 0.5. Crop and flip are one affine map per sample, applied to the whole batch at
       once by ``grid_sample`` (bilinear): output pixel ``j`` samples the crop ``[left,
       left + w)`` at ``left + (j + 1/2) w / S - 1/2``, as resizing the cropped image would.
    3. If ``cfg.normalize``: ``(x - mean) / std`` with the ImageNet statistics.

    Random numbers come from the global CPU torch generator, so a seeded run repeats exactly.

    Example:
        >>> t = BatchTransform(DataConfig(image_size=16), train=False)
        >>> t(torch.full((2, 3, 16, 16), 255, dtype=torch.uint8)).max().item()
        1.0
    """

    def __init__(self, cfg: DataConfig, train: bool) -> None:
        """Prepare batches for ``cfg``; augment only when ``train`` and ``cfg.augment``."""
        self.size = cfg.image_size
        self.augment = bool(cfg.augment and train)
        self.normalize = cfg.normalize
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Transform one batch; see the class docstring."""
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"expected a uint8 [B, C, H, W] batch, got {images.dtype} {tuple(images.shape)}"
            )
        x = images.to(torch.float32).div_(255.0)
        if self.augment and x.shape[0] > 0:
            x = self._crop_and_flip(x)
        if self.normalize:
            mean, std = self._statistics(x.device)
            x = x.sub_(mean).div_(std)
        return x

    def __repr__(self) -> str:
        """Show the settings."""
        return (
            f"BatchTransform(size={self.size}, augment={self.augment}, normalize={self.normalize})"
        )

    def _statistics(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._stats:
            mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
            self._stats[device] = (mean, std)
        return self._stats[device]

    def _crop_and_flip(self, x: torch.Tensor) -> torch.Tensor:
        b, _, height, width = x.shape
        top, left, h, w = random_crop_boxes(b, height, width)
        flip = torch.rand(b) < 0.5
        sx = w / width
        theta = torch.zeros(b, 2, 3, dtype=torch.float32)
        theta[:, 0, 0] = torch.where(flip, -sx, sx)
        theta[:, 0, 2] = (2 * left + w) / width - 1
        theta[:, 1, 1] = h / height
        theta[:, 1, 2] = (2 * top + h) / height - 1
        grid = F.affine_grid(
            theta.to(x.device), [b, x.shape[1], self.size, self.size], align_corners=False
        )
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_crop_boxes(
    batch: int, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample ``RandomResizedCrop`` boxes for a batch, vectorised over samples.

    Per sample, as torchvision's ``RandomResizedCrop.get_params``: up to 10 attempts of
    ``area = H W U(0.5, 1)``, ``ratio = exp(U(log 3/4, log 4/3))``, ``w = round(sqrt(area
    ratio))``, ``h = round(sqrt(area / ratio))``; the first with ``w <= W`` and ``h <= H`` is kept
    and placed uniformly; if none fits, the largest centred box of aspect ratio within range.

    Returns:
        ``(top, left, h, w)``, each float32 ``[batch]`` holding integers.
    """
    area = height * width * torch.empty(batch, CROP_ATTEMPTS).uniform_(*CROP_SCALE)
    log_ratio = torch.empty(batch, CROP_ATTEMPTS).uniform_(
        math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    )
    ratio = log_ratio.exp()
    w = torch.sqrt(area * ratio).round()
    h = torch.sqrt(area / ratio).round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.int8).argmax(dim=1, keepdim=True)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    found = fits.any(dim=1)
    fallback_w, fallback_h = _fallback_box(height, width)
    w = torch.where(found, w, torch.tensor(float(fallback_w)))
    h = torch.where(found, h, torch.tensor(float(fallback_h)))
    top = torch.floor(torch.rand(batch) * (height - h + 1))
    left = torch.floor(torch.rand(batch) * (width - w + 1))
    top = torch.where(found, top, torch.floor((height - h) / 2))
    left = torch.where(found, left, torch.floor((width - w) / 2))
    return top, left, h, w


def _fallback_box(height: int, width: int) -> tuple[int, int]:
    in_ratio = width / height
    if in_ratio < CROP_RATIO[0]:
        return width, int(round(width / CROP_RATIO[0]))
    if in_ratio > CROP_RATIO[1]:
        return int(round(height * CROP_RATIO[1])), height
    return width, height
