"""MARS-PGM and l2-PGM: projected gradient descent inside a ball around the pretrained weights."""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
import math
from typing import Literal
import warnings

from torch import nn

from tether.errors import ConfigError
from tether.finetune.layers import HEAD
from tether.finetune.layers import LayerGroups
from tether.finetune.layers import layer_groups
from tether.finetune.layers import unwrap
from tether.finetune.regularizers._base import BaseProjection
from tether.finetune.regularizers._plan import ProjectionPlan
from tether.finetune.regularizers._reference import Reference
from tether.finetune.regularizers._targets import Target
from tether.finetune.regularizers._targets import collect_targets
from tether.finetune.regularizers._targets import unknown_free
from tether.finetune.regularizers.config import NORMS
from tether.finetune.regularizers.config import Norm


Mode = Literal["rescale", "exact"]
MODES: tuple[Mode, ...] = ("rescale", "exact")


def _check_radius(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{what} must be a number > 0 (inf leaves it free), got {value!r}")
    return float(value)


def _warn_free(model: nn.Module, targets: list[Target], free: tuple[str, ...]) -> None:
    """One warning naming the parameters that no rule constrains (see :func:`unknown_free`)."""
    left, share = unknown_free(model, targets, free=free)
    if left:
        shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
        warnings.warn(
            f"DistanceConstraint leaves {len(left)} parameter tensor(s) free, "
            f"{100 * share:.1f} % of all parameters: {shown}; pass free=[...] to accept that",
            UserWarning,
            stacklevel=3,
        )


def resolve_radii(
    radius: float | Mapping[str, float], head_radius: float, groups: LayerGroups
) -> dict[str, float]:
    """``{group: radius}`` for every group, head included, from a float or a per-group dict."""
    if isinstance(radius, Mapping):
        groups.check_names(list(radius), what="radius")
        missing = [g for g in groups.extractor if g not in radius]
        if missing:
            raise ConfigError(
                f"radius gives no value for layer group(s) {', '.join(missing)}; "
                "give every group a radius (inf leaves a group free)"
            )
        radii = {g: _check_radius(radius[g], f"radius[{g!r}]") for g in groups.extractor}
    else:
        value = _check_radius(radius, "radius")
        radii = dict.fromkeys(groups.extractor, value)
    radii[HEAD] = _check_radius(head_radius, "head_radius")
    return radii


class DistanceConstraint(BaseProjection):
    """Hold every layer inside a ball around its pretrained weights (Gouk et al., ICLR 2021).

    After each optimiser step, for every constrained tensor ``W`` with reference ``W0``
    (zero for the new head) and each row ``j`` (an output unit)::

        T_j <- T_j / max(1, ||T_j|| / r_j),   T = W - W0          (mode "rescale")

    with ``||.||`` the l1 norm of the row for ``norm="mars"`` (so the largest row is the
    maximum-absolute-row-sum norm, the l-inf operator norm of ``W - W0``) or the Frobenius
    norm of the whole tensor for ``norm="frob"``. ``mode="exact"`` replaces the radial
    rescaling by the Euclidean projection onto each row's l1 ball (Duchi et al. 2008); for
    ``frob`` the two coincide. BatchNorm gamma is clipped element-wise through its diagonal
    ``gamma / sqrt(running_var + 1e-6)``, whatever the norm, as in the reference code;
    biases and BatchNorm beta stay free. A transformers ``Conv1D`` (GPT-2), whose weight is
    stored transposed, ``[in, out]``, is measured as the ``nn.Linear`` with weight ``W.T``: its
    rows are the stored tensor's columns.

    The constraint follows the model: built before or after ``model.to(device)`` (or
    ``.double()``, ``channels_last``), W0 moves where the weights live. A DataParallel,
    DistributedDataParallel or ``torch.compile`` wrapper is looked through (group and head
    names are the inner model's); sharded parameters (FSDP, ZeRO-3) are refused.

    Args:
        model: the network, its new head in place, its current weights taken as W0.
        norm: ``"mars"`` or ``"frob"``.
        radius: one radius for every extractor group, or ``{group: radius}`` for each
            (:func:`tether.finetune.layers.geometric_radii` builds ``base * scale**depth``);
            ``math.inf`` leaves a group free.
        head_radius: radius of the new head, measured from zero.
        head: dotted name of the new head module.
        mode: ``"rescale"`` (the papers') or ``"exact"``.
        relative: if true, a group's radius is a fraction of each row's (for ``frob``: each
            tensor's; for BatchNorm: each channel's) pretrained norm, which makes one number
            comparable across layers of very different scale. The head stays absolute.
        groups: layer groups; by default :func:`tether.finetune.layers.layer_groups`.
        reference: W0; by default a snapshot of ``model`` now.
        chunk: elements per CPU chunk (see :class:`ProjectionPlan`).
        free: parameter or module names left free knowingly. Any other trainable parameter
            that no rule constrains (an embedding, a custom layer's) is named in one
            ``UserWarning`` with its share of all parameters.

    Example:
        >>> import torch
        >>> from torchvision.models import resnet18
        >>> model = resnet18(num_classes=10)
        >>> constraint = DistanceConstraint(
        ...     model, norm="mars", radius=2.0, head_radius=10.0, head="fc"
        ... )
        >>> optimizer = torch.optim.Adam(model.parameters())
        >>> handle = constraint.attach(optimizer)  # projects after every optimizer.step()
        >>> sorted(constraint.distances())[:2]
        ['head', 'layer1']
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        norm: Norm,
        radius: float | Mapping[str, float],
        head_radius: float,
        head: str,
        mode: Mode = "rescale",
        relative: bool = False,
        groups: LayerGroups | None = None,
        reference: Reference | None = None,
        chunk: int | None = None,
        free: Sequence[str] = (),
    ) -> None:
        model = unwrap(model)
        if norm not in NORMS:
            raise ConfigError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.norm = norm
        self.mode = mode
        self.relative = relative
        self.groups = groups if groups is not None else layer_groups(model, head=head)
        self.radii = resolve_radii(radius, head_radius, self.groups)
        self.targets = collect_targets(model, self.groups)
        _warn_free(model, self.targets, tuple(free))
        self.reference = reference if reference is not None else Reference(self.targets)
        self.plan = ProjectionPlan(
            self.targets, self.reference, self.groups.names, norm=norm, chunk=chunk
        )
        self.plan.group_radius(self.radii, relative=relative)

    def project_(self) -> None:
        """Project every constrained tensor back into its ball, in place."""
        self.plan.project_(exact=self.mode == "exact")

    def distances(self) -> dict[str, float]:
        """``{group: largest distance from W0}`` in this constraint's norm (absolute)."""
        return self.plan.distances()

    def __repr__(self) -> str:
        radii = ", ".join(f"{g}={r:g}" for g, r in self.radii.items() if not math.isinf(r))
        kind = "relative" if self.relative else "absolute"
        return f"DistanceConstraint(norm={self.norm}, mode={self.mode}, {kind}: {radii})"
