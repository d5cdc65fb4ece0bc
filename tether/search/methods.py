"""The methods a study compares, as data, and how a trial's parameters become a recipe patch.

A method is a name, one line of description, a recipe *patch* that fixes the method (a nested
dict deep-merged into the base recipe) and the names of the search parameters it accepts. Every
parameter has one stable Optuna name and one place in the recipe::

    parameter      recipe key                methods
    lr             train.lr                  all
    radius         constraint.radius         constraint methods (the base with geometric)
    radius.<g>     constraint.radius.<g>     constraint methods, groups: independent
    scale          constraint.scale          constraint methods, groups: geometric
    head_radius    constraint.head_radius    constraint methods
    norm           constraint.norm           pgm (categorical over mars, frob)
    alpha          penalty.alpha             penalty methods (the pretrained layers; BSS: eta)
    beta           penalty.beta              penalty methods (the new head; not BSS)
    correct_epoch  train.correct_epoch       rsl (integer: the epoch label correction starts)
    correct_threshold  train.correct_threshold   rsl (relabel above this confidence)
    reweight_epoch train.reweight_epoch      rsl (integer: the epoch reweighting starts)
    reweight_temperature  train.reweight_temperature  rsl (T0 of the weights' softmax)
    k              constraint.k              ftp (in [0, 1]: the weight of a shrinking step)
    radius_lr      constraint.radius_lr      ftp (the radii's Adam learning rate)
    proj_lr        constraint.radius_lr      tpgm (the same, under the TPGM paper's name)
    proj_freq      constraint.proj_freq      tpgm (integer: optimiser steps per radius update)
    holdout        constraint.holdout        tpgm (share of training images held out)
    lam            train.spd_lam             spd (strength of the selective decay)

Constraint methods (those that search radii) also take four fixed (not searched) options:
``groups`` (how the pretrained groups share radii: ``shared`` = one radius for all, as in the
MARS-PGM paper; ``independent`` = one parameter per group; ``geometric`` =
``radius * scale**depth``, Li & Zhang, NeurIPS 2021), ``relative`` and ``mode``, passed
straight into the recipe's ``constraint`` section, and ``warm_start``: a method of the spec
that learns its radii (``ftp``, ``tpgm``), whose best trial's radii become the first trial
(:mod:`tether.search.warm_start`). Every method takes ``wise: true``: WiSE-FT after its
training, the coefficient chosen on the validation split (``train.wise: val``).

Every patch sets each switch that another method turns on (``constraint.learn``,
``train.linear_probe``, ``bn_eval``, ``wise``, the relabelling epochs), so that a method is
the same whatever the base recipe says; the knobs behind a switch (``constraint.k``,
``train.spd_lam``, ...) are read only while it is on. ``train.optimizer`` (Adam or SGD) is the
recipe's and only ``spd`` sets it, so a spec refuses a base recipe whose optimiser is ``spd``
(:func:`tether.search.spec.spec_from_dict`): every other method would run SPD too.

A new method is one ``@register_method`` function here; nothing else changes. A trial's
parameters are sampled into a patch by :meth:`tether.search.space.MethodSpace.suggest`; this
module imports neither Optuna nor torch.

Example:
    >>> get_method("mars-pgm").patch["constraint"]
    {'norm': 'mars', 'learn': 'none'}
    >>> get_method("mars-pgm").required_params("geometric")
    ('radius', 'head_radius', 'scale')
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
import math
from typing import Any
from typing import Literal

from tether.registry import Registry


Patch = dict[str, Any]
GroupMode = Literal["shared", "independent", "geometric"]
GROUP_MODES: tuple[GroupMode, ...] = ("shared", "independent", "geometric")

PARAM_PATHS: dict[str, tuple[str, str]] = {
    "lr": ("train", "lr"),
    "radius": ("constraint", "radius"),
    "scale": ("constraint", "scale"),
    "head_radius": ("constraint", "head_radius"),
    "norm": ("constraint", "norm"),
    "alpha": ("penalty", "alpha"),
    "beta": ("penalty", "beta"),
    "correct_epoch": ("train", "correct_epoch"),
    "correct_threshold": ("train", "correct_threshold"),
    "reweight_epoch": ("train", "reweight_epoch"),
    "reweight_temperature": ("train", "reweight_temperature"),
    "k": ("constraint", "k"),
    "radius_lr": ("constraint", "radius_lr"),
    "proj_lr": ("constraint", "radius_lr"),
    "proj_freq": ("constraint", "proj_freq"),
    "holdout": ("constraint", "holdout"),
    "lam": ("train", "spd_lam"),
}
"""Where each search parameter lands in the recipe (``radius.<group>``: under ``radius``)."""

INT_PARAMS = frozenset({"correct_epoch", "reweight_epoch", "proj_freq"})
"""Parameters that are integers (a range of them is sampled with ``suggest_int``)."""

GROUP_PREFIX = "radius."
CONSTRAINT_OPTIONS = ("groups", "relative", "mode", "warm_start")
SPACE_OPTIONS = ("enqueue", "wise")
"""The options every method's entry in a spec takes (the others are in ``Method.options``)."""


@dataclass(frozen=True)
class Method:
    """One method a study can compare.

    Attributes:
        name: the registry name, also the second half of the study name ``<spec>/<method>``.
        description: one line for listings and reports.
        patch: the recipe patch that fixes the method (deep-merged into the base recipe).
        params: the search parameters it accepts, in the order they are suggested.
        required: the parameters a study spec must give a range for.
        options: the fixed options it accepts besides :data:`SPACE_OPTIONS` (a constraint
            method's :data:`CONSTRAINT_OPTIONS`).
    """

    name: str
    description: str
    patch: Mapping[str, Any]
    params: tuple[str, ...]
    required: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    @property
    def constrained(self) -> bool:
        """Whether the method projects onto radii (and so takes the ``groups`` layouts)."""
        return "radius" in self.params

    @property
    def learns_radii(self) -> bool:
        """Whether the method learns its radii while training (so it can warm-start another)."""
        return self.patch.get("constraint", {}).get("learn", "none") != "none"

    def accepts(self, key: str, groups: GroupMode) -> bool:
        """Whether ``key`` is a search parameter of this method under the ``groups`` layout."""
        if key == "scale":
            return self.constrained and groups == "geometric"
        if key.startswith(GROUP_PREFIX):
            return self.constrained and groups == "independent" and len(key) > len(GROUP_PREFIX)
        return key in self.params

    def describe_params(self) -> str:
        """The accepted parameter names, for error messages."""
        names = [p for p in self.params if p != "scale"]
        if self.constrained:
            names += ["radius.<group> (groups: independent)", "scale (groups: geometric)"]
        return ", ".join(names)

    def required_params(self, groups: GroupMode) -> tuple[str, ...]:
        """The parameters that need a range under the ``groups`` layout."""
        extra = ("scale",) if self.constrained and groups == "geometric" else ()
        return (*self.required, *extra)


METHODS: Registry[Method] = Registry("method")


def register_method(factory: Callable[[], Method]) -> Callable[[], Method]:
    """Register the method that ``factory`` describes (its name must be new)."""
    method = factory()
    unknown = [p for p in method.params if p not in PARAM_PATHS]
    if unknown:
        raise ValueError(f"method {method.name!r} names unknown parameter {unknown[0]!r}")
    METHODS.add(method.name, method)
    return factory


def list_methods() -> list[str]:
    """The registered method names, sorted."""
    return METHODS.names()


def get_method(name: str) -> Method:
    """The method registered as ``name``; a :class:`ConfigError` lists the valid names."""
    return METHODS.get(name)


_UNCONSTRAINED: Patch = {
    "norm": "none",
    "learn": "none",
    "radius": math.inf,
    "head_radius": math.inf,
    "scale": None,
}
_LEARNED_RADII: Patch = {
    "norm": "mars",
    "radius": math.inf,
    "head_radius": math.inf,
    "scale": None,
    "mode": "rescale",
}
"""What FTP and TPGM need: MARS rows, no given radius, the radial rescaling."""

_CONSTRAINT_PARAMS = ("radius", "scale", "head_radius", "lr")
_PENALTY_PARAMS = ("alpha", "beta", "lr")


_RSL_PARAMS = ("correct_epoch", "correct_threshold", "reweight_epoch", "reweight_temperature")
_PLAIN_TRAINING: Patch = {
    "correct_epoch": 0,
    "reweight_epoch": 0,
    "linear_probe": False,
    "bn_eval": False,
    "wise": None,
}
"""Every method trains on the given labels, from the new head as built, with BatchNorm in
training mode, and keeps its final weights, whatever the base recipe says; the one method
that does otherwise (``rsl``, ``lp-ft``, ``wise-ft``) overrides its key."""


def _method(
    name: str,
    description: str,
    *,
    constraint: Patch,
    params: tuple[str, ...],
    penalty: str = "none",
    train: Patch | None = None,
    required: tuple[str, ...] = (),
    options: tuple[str, ...] = (),
) -> Method:
    """A method whose patch sets every switch another method turns on (module docstring)."""
    return Method(
        name,
        description,
        patch={
            "constraint": constraint,
            "penalty": {"name": penalty},
            "train": {**_PLAIN_TRAINING, **(train or {})},
        },
        params=params,
        required=required,
        options=options,
    )


def _constraint(name: str, description: str, norm: str | None) -> Method:
    fixed: Patch = {"learn": "none"} if norm is None else {"norm": norm, "learn": "none"}
    params = _CONSTRAINT_PARAMS if norm is not None else ("norm", *_CONSTRAINT_PARAMS)
    required = ("radius", "head_radius") if norm is not None else ("norm", "radius", "head_radius")
    return _method(
        name,
        description,
        constraint=fixed,
        params=params,
        required=required,
        options=CONSTRAINT_OPTIONS,
    )


def _penalty(name: str, description: str, params: tuple[str, ...] = _PENALTY_PARAMS) -> Method:
    return _method(
        name,
        description,
        constraint=dict(_UNCONSTRAINED),
        penalty=name,
        params=params,
        required=tuple(p for p in ("alpha", "beta") if p in params),
    )


@register_method
def _standard() -> Method:
    """Standard fine-tuning: no constraint, no penalty."""
    return _method(
        "standard",
        "standard fine-tuning: no constraint, no penalty",
        constraint=dict(_UNCONSTRAINED),
        params=("lr",),
    )


@register_method
def _mars_pgm() -> Method:
    """MARS-PGM (Gouk, Hospedales, Pontil, ICLR 2021): the MARS-norm ball around W0."""
    return _constraint("mars-pgm", "MARS-norm ball around the pretrained weights (PGM)", "mars")


@register_method
def _frob_pgm() -> Method:
    """l2-PGM (the MARS paper's Frobenius variant; RSL, NeurIPS 2021, uses it per layer)."""
    return _constraint("frob-pgm", "Frobenius ball around the pretrained weights (PGM)", "frob")


@register_method
def _pgm() -> Method:
    """PGM with the norm itself searched (categorical ``norm`` over mars, frob)."""
    return _constraint("pgm", "distance ball around the pretrained weights, norm searched", None)


@register_method
def _mars_sp() -> Method:
    """MARS-SP: the MARS norm as a penalty (Gouk et al. 2021)."""
    return _penalty("mars-sp", "MARS-norm distance to the pretrained weights as a penalty")


@register_method
def _l2_sp() -> Method:
    """L2-SP (Li, Grandvalet, Davoine, ICML 2018)."""
    return _penalty("l2-sp", "squared l2 distance to the pretrained weights as a penalty")


@register_method
def _frob_sp() -> Method:
    """The MARS code's ``frob`` penalty (squared Frobenius per layer, no 1/2)."""
    return _penalty("frob-sp", "squared Frobenius distance per layer as a penalty")


@register_method
def _delta() -> Method:
    """DELTA (Li et al., ICLR 2019): attention-weighted feature-map distance."""
    return _penalty("delta", "attention-weighted feature-map distance to the pretrained network")


@register_method
def _l1_sp() -> Method:
    """L1-SP (Li, Grandvalet, Davoine, ICML 2018, the authors' wd_mode 4)."""
    return _penalty("l1-sp", "l1 distance to the pretrained weights as a penalty")


@register_method
def _l2_sp_fisher() -> Method:
    """L2-SP-Fisher: L2-SP weighted by the source task's diagonal Fisher information."""
    return _penalty(
        "l2-sp-fisher", "L2-SP weighted by the pretrained network's Fisher information"
    )


@register_method
def _bss() -> Method:
    """Batch Spectral Shrinkage (Chen et al., NeurIPS 2019): ``alpha`` is its trade-off eta."""
    return _penalty(
        "bss", "shrinks the smallest singular values of the batch features", ("alpha", "lr")
    )


@register_method
def _rsl() -> Method:
    """RSL (Li & Zhang, NeurIPS 2021): layer-wise Frobenius radii, label correction, reweighting.

    The patch holds the paper's ResNet-18 noisy-label settings (reweighting from epoch 5 at
    temperature 2, correction from epoch 10 above 0.9); a spec searches any of the four.
    """
    base = _constraint("rsl", "", "frob")
    return _method(
        "rsl",
        "Frobenius radii + self label-correction + sample reweighting (NeurIPS 2021)",
        constraint=dict(base.patch["constraint"]),
        train={
            "correct_epoch": 10,
            "correct_threshold": 0.9,
            "reweight_epoch": 5,
            "reweight_temperature": 2.0,
        },
        params=(*base.params, *_RSL_PARAMS),
        required=base.required,
        options=base.options,
    )


@register_method
def _ftp() -> Method:
    """FTP (Tian et al., NeurIPS 2023): one radius per tensor, learned inside the optimiser."""
    return _method(
        "ftp",
        "MARS radii learned inside the optimiser from the training gradient (FTP)",
        constraint={**_LEARNED_RADII, "learn": "ftp"},
        params=("k", "radius_lr", "lr"),
    )


@register_method
def _tpgm() -> Method:
    """TPGM (Tian et al., CVPR 2023): radii learned on held-out training images."""
    return _method(
        "tpgm",
        "MARS radii learned on held-out training images (TPGM)",
        constraint={**_LEARNED_RADII, "learn": "tpgm"},
        params=("proj_lr", "proj_freq", "holdout", "lr"),
    )


@register_method
def _spd() -> Method:
    """SPD (Tian, Huang, Kira, NeurIPS 2024): Adam that decays only steps moving away from W0.

    SPD replaces weight decay, so the patch sets it to 0 (the recipe would refuse both).
    """
    return _method(
        "spd",
        "Adam with selective projection decay towards the pretrained weights (SPD)",
        constraint=dict(_UNCONSTRAINED),
        train={"optimizer": "spd", "weight_decay": 0.0},
        params=("lam", "lr"),
        required=("lam",),
    )


@register_method
def _lp_ft() -> Method:
    """LP-FT (Kumar et al., ICLR 2022): a linear probe for the head, then fine-tuning.

    As in the paper's runs, BatchNorm stays in eval mode while fine-tuning (``bn_eval``).
    """
    return _method(
        "lp-ft",
        "linear probe for the new head, then standard fine-tuning (LP-FT)",
        constraint=dict(_UNCONSTRAINED),
        train={"linear_probe": True, "bn_eval": True},
        params=("lr",),
    )


@register_method
def _wise_ft() -> Method:
    """WiSE-FT (Wortsman et al., CVPR 2022): standard fine-tuning, then weight interpolation."""
    return _method(
        "wise-ft",
        "standard fine-tuning, then interpolation towards W0 chosen on val (WiSE-FT)",
        constraint=dict(_UNCONSTRAINED),
        train={"wise": "val"},
        params=("lr",),
    )
