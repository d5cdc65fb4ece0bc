"""Recipe sections for the two regulariser families: ``constraint:`` and ``penalty:``."""

from __future__ import annotations

from dataclasses import dataclass
import math
import typing
from typing import Literal

from tether.errors import ConfigError
from tether.finetune.regularizers.penalties import PENALTIES


Norm = Literal["mars", "frob"]
Learner = Literal["none", "ftp", "tpgm", "tpgm-posthoc"]
"""The distances a constraint or penalty measures: max absolute row sum, or Frobenius."""
NORMS: tuple[Norm, ...] = typing.get_args(Norm)


@dataclass(frozen=True)
class ConstraintConfig:
    """The projection applied after every optimiser step (``norm: none`` = no projection).

    ``radius`` is one number for every pretrained group, a ``{group: radius}`` mapping, or,
    with ``scale`` set, the base of the layer-wise schedule ``radius * scale**depth``.

    ``learn`` replaces the given radii by one radius per tensor learned during the run
    (the new head stays free; reference/learned-radii.md has the exact algorithms):

    - ``ftp`` (Tian et al., NeurIPS 2023): inside the optimiser, from the previous step's
      deviation; ``norm`` must be ``mars``. ``k`` in [0, 1] damps a hypergradient that would
      shrink a radius (1: the reference's, strongest).
    - ``tpgm`` (Tian et al., CVPR 2023): after every ``proj_freq`` steps, ``iters`` updates
      from a held-out batch of ``holdout_batch`` images drawn from a ``holdout`` share of the
      training images (carved out, never the validation split); ``init`` ``tight`` (half the
      smallest row distance, the reference's) or ``loose`` (the largest).
    - ``tpgm-posthoc``: train freely, then ``posthoc_iters`` radius updates between W0 and
      the finished weights and one projection (with ``norm: frob``: a learned per-tensor
      WiSE-FT).

    ``radius_lr`` is the radii's Adam learning rate (TPGM's ``proj_lr``). ``tensors``: which
    tensors, ``reference`` (every trainable tensor but the head, 1-D ones as one whole row)
    or ``tether`` (as the fixed-radius constraint: conv and linear weights by rows, BatchNorm
    scales element-wise through ``gamma / sqrt(running_var + 1e-6)``, other normalisation
    scales element-wise, biases free).
    """

    norm: Literal["none", Norm] = "none"
    radius: float | dict[str, float] = math.inf
    scale: float | None = None
    head_radius: float = math.inf
    relative: bool = False
    mode: Literal["rescale", "exact"] = "rescale"
    learn: Learner = "none"
    tensors: Literal["reference", "tether"] = "reference"
    k: float = 1.0
    radius_lr: float = 1e-2
    proj_freq: int = 1
    iters: int = 1
    posthoc_iters: int = 200
    holdout: float = 0.1
    holdout_batch: int = 64
    init: Literal["tight", "loose"] = "tight"

    def __post_init__(self) -> None:
        self._check_radii()
        self._check_learner()

    @property
    def learned(self) -> bool:
        """Whether the radii are learned during the run rather than given."""
        return self.learn != "none"

    @property
    def needs_holdout(self) -> bool:
        """Whether the run carves a held-out share from the training images (TPGM)."""
        return self.learn in ("tpgm", "tpgm-posthoc")

    def _check_radii(self) -> None:
        radii = (
            [(f"constraint.radius.{g}", r) for g, r in self.radius.items()]
            if isinstance(self.radius, dict)
            else [("constraint.radius", self.radius)]
        )
        for key, value in (*radii, ("constraint.head_radius", self.head_radius)):
            if not value > 0:
                raise ConfigError(f"{key} must be > 0 (.inf leaves a layer free), got {value!r}")
        if self.scale is not None:
            if not self.scale > 0:
                raise ConfigError(f"constraint.scale must be > 0, got {self.scale!r}")
            if isinstance(self.radius, dict):
                raise ConfigError(
                    "constraint.scale needs one base radius, not a per-group mapping"
                )
        if self.norm == "none" and (
            isinstance(self.radius, dict)
            or math.isfinite(self.radius)
            or math.isfinite(self.head_radius)
        ):
            raise ConfigError(
                "constraint radii are set but constraint.norm is 'none'; "
                "set constraint.norm to mars or frob"
            )

    def _check_learner(self) -> None:
        if not self.learned:
            return
        if self.norm == "none":
            raise ConfigError(
                f"constraint.learn is {self.learn!r} but constraint.norm is 'none'; "
                "set constraint.norm to mars or frob"
            )
        if self.learn == "ftp" and self.norm != "mars":
            raise ConfigError(
                f"constraint.learn 'ftp' needs constraint.norm mars, got {self.norm!r}"
            )
        given = isinstance(self.radius, dict) or math.isfinite(self.radius)
        if given or math.isfinite(self.head_radius) or self.scale is not None:
            raise ConfigError(
                f"constraint.learn is {self.learn!r}: the radii are learned, so leave "
                "constraint.radius, head_radius and scale unset"
            )
        if self.mode != "rescale":
            raise ConfigError(
                "learned radii use the radial rescaling: constraint.mode must be rescale"
            )
        if not 0 <= self.k <= 1:
            raise ConfigError(f"constraint.k must be in [0, 1], got {self.k!r}")
        if not (self.radius_lr > 0 and math.isfinite(self.radius_lr)):
            raise ConfigError(f"constraint.radius_lr must be > 0, got {self.radius_lr!r}")
        for key in ("proj_freq", "iters", "posthoc_iters", "holdout_batch"):
            value = getattr(self, key)
            if value < 1:
                raise ConfigError(f"constraint.{key} must be an integer >= 1, got {value!r}")
        if not 0 < self.holdout < 1:
            raise ConfigError(
                f"constraint.holdout is the share of training images held out, in (0, 1); "
                f"got {self.holdout!r}"
            )


@dataclass(frozen=True)
class PenaltyConfig:
    """The loss term. ``alpha`` weighs the pretrained layers, ``beta`` the new head.

    ``include`` (l2-sp, l1-sp, l2-sp-fisher, frob-sp, mars-sp): ``weights`` = conv/linear
    weights as in the L2-SP authors' code, ``all`` = every pretrained parameter. ``layers``,
    ``probe_epochs`` and ``ablation_batches`` are DELTA's (empty ``layers``: the last conv of
    each stage).

    ``bss`` (Batch Spectral Shrinkage, Chen et al., NeurIPS 2019) uses ``alpha`` as its
    trade-off eta (the reference code's default is 0.001, not this class's 0.01: a study
    sets it) and ``k``, how many of the smallest singular values of the head's input batch
    it shrinks; ``beta`` is unused (BSS is added to standard fine-tuning).

    ``l2-sp-fisher`` weighs each pretrained weight by the diagonal Fisher information of the
    source network on its source task, estimated on ``fisher_samples`` source images,
    divided by its mean (so ``alpha`` is comparable to l2-sp's) plus ``fisher_epsilon``.
    ``fisher_data`` is a folder of source-domain images (any layout, labels unused); the
    digits task with ``model.weights: digits-source`` provides its own when it is unset.
    """

    name: str = "none"
    alpha: float = 0.01
    beta: float = 0.01
    include: Literal["weights", "all"] = "weights"
    layers: tuple[str, ...] = ()
    probe_epochs: int = 10
    ablation_batches: int = 4
    k: int = 1
    fisher_samples: int = 512
    fisher_epsilon: float = 1e-3
    fisher_data: str | None = None

    def __post_init__(self) -> None:
        PENALTIES.get(self.name, key="penalty.name")
        for key in ("alpha", "beta", "fisher_epsilon"):
            value = getattr(self, key)
            if not value >= 0:
                raise ConfigError(f"penalty.{key} must be >= 0, got {value!r}")
        if not math.isfinite(self.fisher_epsilon):
            raise ConfigError(
                f"penalty.fisher_epsilon must be finite, got {self.fisher_epsilon!r}"
            )
        for key in ("probe_epochs", "ablation_batches", "k", "fisher_samples"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"penalty.{key} must be an integer >= 1, got {value!r}")
        if self.fisher_data is not None and (
            not isinstance(self.fisher_data, str) or not self.fisher_data.strip()
        ):
            raise ConfigError(
                f"penalty.fisher_data must be a folder path, got {self.fisher_data!r}"
            )
