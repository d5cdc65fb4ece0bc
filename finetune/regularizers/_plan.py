"""The vectorised engine behind every distance regulariser.

At construction the constrained tensors are sorted into *blocks*: rows of one length, one
dtype and one device, stacked into a ``[R, L]`` matrix. A step then costs a handful of
batched ops per block instead of several kernels per tensor:

1. ``t = cat(rows of W) - W0``                      (one read of W and W0)
2. ``n = ||t_j||`` per row                           (l1 for MARS, l2 for Frobenius)
3. ``f = min(1, r_j / n_j) - 1``                     (0 inside the ball)
4. ``W += f * t``  with ``torch._foreach_add_``      (one read-modify-write of W)

so that ``W = W0 + min(1, r/n) (W - W0)``: the radial rescaling of the papers. ResNet-101
has ~12 distinct row lengths, hence ~12 blocks instead of ~300 tensors.

On the CPU a block is cut into chunks of about ``chunk`` elements that fit in cache, so the
intermediate ``t`` is never written to memory: the traffic is close to the bound of reading
W and W0 and writing W once. On CUDA a block is one chunk (launches dominate there).

Element-wise (BatchNorm / LayerNorm) targets form one small diagonal block per device.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
import math
from typing import Literal

import torch

from finetune.regularizers._l1ball import project_rows_l1
from finetune.regularizers._reference import Reference
from finetune.regularizers._targets import BN_EPS
from finetune.regularizers._targets import Target
from finetune.regularizers._targets import row_view


Norm = Literal["mars", "frob"]
NORMS: tuple[Norm, ...] = ("mars", "frob")
DEFAULT_CPU_CHUNK = 1 << 18


@dataclass(frozen=True)
class _Segment:
    target: Target
    start: int  # first row of this segment in the target's row view
    stop: int

    def view(self, *, whole: bool) -> torch.Tensor:
        return row_view(self.target.param.detach(), whole=whole)[self.start : self.stop]


class _RowBlock:
    """Rows of equal length from one or several tensors, projected as one matrix."""

    def __init__(
        self, segments: list[_Segment], reference: Reference, *, whole: bool, ord: float
    ) -> None:
        self.segments = segments
        self.whole = whole
        self.ord = ord
        self.counts = [s.stop - s.start for s in segments]
        self.w0 = torch.cat(
            [
                row_view(reference.weight(s.target.name), whole=whole)[s.start : s.stop]
                for s in segments
            ]
        )
        for ref, segment in zip(self.w0.split(self.counts), segments, strict=True):
            if segment.target.group == "head":
                ref.zero_()
        self.n_rows, self.length = self.w0.shape
        self.radius = torch.empty(0)
        self.group = torch.empty(0, dtype=torch.long)

    def views(self) -> list[torch.Tensor]:
        return [s.view(whole=self.whole) for s in self.segments]

    def reference_norms(self) -> torch.Tensor:
        return _row_norms(self.w0, self.ord, None)

    def _offsets(self, scratch: _Scratch | None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The param views and ``T = W - W0`` for this block (in scratch space if given)."""
        views = self.views()
        out = None if scratch is None else scratch.offsets[: self.w0.numel()].view_as(self.w0)
        if len(views) == 1:
            t = torch.sub(views[0], self.w0, out=out) if out is not None else views[0] - self.w0
            return views, t
        t = torch.cat(views, out=out) if out is not None else torch.cat(views)
        return views, t.sub_(self.w0)

    def norms(self, scratch: _Scratch | None) -> torch.Tensor:
        _, t = self._offsets(scratch)
        return _row_norms(t, self.ord, scratch)

    def project(self, scratch: _Scratch | None, *, exact: bool, sync: bool) -> None:
        views, t = self._offsets(scratch)
        norms = _row_norms(t, self.ord, scratch)
        outside = norms > self.radius
        if sync and not bool(outside.any()):
            return
        if exact and self.ord == 1.0:
            rows = outside.nonzero().squeeze(1)
            moved = project_rows_l1(t[rows], self.radius[rows]) - t[rows]
            t.zero_()
            t[rows] = moved
            factor = torch.ones_like(norms)
        else:
            factor = torch.where(outside, self.radius / norms - 1.0, torch.zeros_like(norms))
        if len(views) == 1:
            views[0].addcmul_(t, factor.unsqueeze(1))
        else:
            t.mul_(factor.unsqueeze(1))
            torch._foreach_add_(views, list(t.split(self.counts)))


@dataclass
class _Scratch:
    """Preallocated CPU buffers for one chunk, so a step allocates (and page-faults) nothing."""

    offsets: torch.Tensor
    magnitudes: torch.Tensor


def _row_norms(t: torch.Tensor, ord: float, scratch: _Scratch | None) -> torch.Tensor:
    # abs + sum is ~3x faster on the CPU than linalg.vector_norm(ord=1, dim=1).
    if ord == 1.0:
        if scratch is None:
            return t.abs().sum(dim=1)
        return torch.abs(t, out=scratch.magnitudes[: t.numel()].view_as(t)).sum(dim=1)
    return torch.linalg.vector_norm(t, ord, dim=1)


class _DiagBlock:
    """Element-wise targets: BatchNorm through its diagonal gamma/sqrt(var+eps), LayerNorm as is.

    The diagonal is clipped element-wise, ``t_i <- clip(t_i, -r_i, r_i)`` with ``t = d - d0``,
    which is both the papers' rescaling and the exact projection for a diagonal map. The
    *current* running variance is used, as in the reference code.
    """

    def __init__(self, targets: list[Target], reference: Reference) -> None:
        self.targets = targets
        self.counts = [t.param.numel() for t in targets]
        self.n_rows = sum(self.counts)
        gamma0 = torch.cat([reference.weight(t.name).view(-1) for t in targets])
        scale0 = torch.cat([self._scale(t.param, reference.running_var(t.name)) for t in targets])
        self.d0 = gamma0 / scale0  # the head holds no diagonal targets (collect_targets)
        self.radius = torch.empty(0)
        self.group = torch.empty(0, dtype=torch.long)

    def _diagonal(self) -> tuple[torch.Tensor, torch.Tensor]:
        gamma = torch.cat([t.param.detach().view(-1) for t in self.targets])
        scale = torch.cat([self._scale(t.param, t.running_var()) for t in self.targets])
        return gamma / scale, scale

    @staticmethod
    def _scale(gamma: torch.Tensor, var: torch.Tensor | None) -> torch.Tensor:
        if var is None:
            return torch.ones_like(gamma.detach().view(-1))
        return torch.sqrt(var.detach().view(-1).to(gamma.dtype) + BN_EPS)

    def reference_norms(self) -> torch.Tensor:
        return self.d0.abs()

    def norms(self, scratch: _Scratch | None) -> torch.Tensor:
        d, _ = self._diagonal()
        return (d - self.d0).abs()

    def project(self, scratch: _Scratch | None, *, exact: bool, sync: bool) -> None:
        d, scale = self._diagonal()
        t = d - self.d0
        clipped = torch.minimum(torch.maximum(t, -self.radius), self.radius)
        gamma = (clipped + self.d0).mul_(scale)
        params = [t.param.detach().view(-1) for t in self.targets]
        torch._foreach_copy_(params, list(gamma.split(self.counts)))


_Block = _RowBlock | _DiagBlock


class ProjectionPlan:
    """Blocks of targets for one norm, with per-row group ids; radii attached later.

    Args:
        targets: the constrained tensors (see :func:`collect_targets`).
        reference: W0 for every target (the head's is replaced by zero).
        groups: group names, indexing the per-row group ids.
        norm: ``"mars"`` (rows, l1) or ``"frob"`` (whole tensors, l2).
        chunk: elements per CPU chunk; ``None`` picks 2**18 on the CPU, no chunking on CUDA.
    """

    def __init__(
        self,
        targets: Sequence[Target],
        reference: Reference,
        groups: Sequence[str],
        *,
        norm: Norm,
        chunk: int | None = None,
    ) -> None:
        reference.check(targets)
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        self.norm = norm
        self.groups = tuple(groups)
        self.blocks: list[_Block] = []
        self._scratch: dict[tuple[torch.device, torch.dtype], _Scratch] = {}
        whole = norm == "frob"
        ord = 1.0 if norm == "mars" else 2.0
        matrices: dict[tuple[torch.device, torch.dtype, int], list[Target]] = {}
        diagonals: dict[tuple[torch.device, torch.dtype], list[Target]] = {}
        for target in targets:
            p = target.param
            if target.kind == "matrix":
                length = p.numel() if whole else p.numel() // max(p.shape[0], 1)
                matrices.setdefault((p.device, p.dtype, length), []).append(target)
            else:
                diagonals.setdefault((p.device, p.dtype), []).append(target)
        for (device, dtype, length), members in matrices.items():
            limit = (
                chunk if chunk is not None else (DEFAULT_CPU_CHUNK if device.type == "cpu" else 0)
            )
            for segments in _chunks(members, length, limit, whole=whole):
                self.blocks.append(_RowBlock(segments, reference, whole=whole, ord=ord))
            if limit:
                size = max(limit, length, *(b.w0.numel() for b in self._row_blocks()))
                known = self._scratch.get((device, dtype))
                if known is None or known.offsets.numel() < size:
                    self._scratch[(device, dtype)] = _Scratch(
                        torch.empty(size, device=device, dtype=dtype),
                        torch.empty(size, device=device, dtype=dtype),
                    )
        for members in diagonals.values():
            self.blocks.append(_DiagBlock(members, reference))
        index = {g: i for i, g in enumerate(self.groups)}
        for block in self.blocks:
            block.group = torch.cat(
                [torch.full((n,), index[t.group], dtype=torch.long) for t, n in _block_rows(block)]
            ).to(_device(block))

    def _row_blocks(self) -> list[_RowBlock]:
        return [b for b in self.blocks if isinstance(b, _RowBlock)]

    def _workspace(self, block: _Block) -> _Scratch | None:
        if isinstance(block, _DiagBlock):
            return None
        return self._scratch.get((block.w0.device, block.w0.dtype))

    def set_radii(self, radius_of: Callable[[_Block], torch.Tensor]) -> None:
        for block in self.blocks:
            block.radius = radius_of(block)

    def group_radius(self, radii: dict[str, float], *, relative: bool) -> None:
        """Attach radii: ``radii[group]`` absolute, or times each row's pretrained norm.

        The head is measured from zero, so its radius is always absolute.
        """
        head = self.groups.index("head") if "head" in self.groups else -1
        table = torch.tensor([radii.get(g, math.inf) for g in self.groups], dtype=torch.float64)

        def radius_of(block: _Block) -> torch.Tensor:
            ref = block.reference_norms().to(torch.float64)
            r = table.to(ref.device)[block.group]
            if relative:
                r = torch.where(block.group == head, r, r * ref)
            return r.to(_dtype(block))

        self.set_radii(radius_of)

    @torch.no_grad()
    def project_(self, *, exact: bool = False) -> None:
        for block in self.blocks:
            sync = _device(block).type == "cpu"
            block.project(self._workspace(block), exact=exact, sync=sync)

    @torch.no_grad()
    def distances(self) -> dict[str, float]:
        """The largest distance from the reference in each group that has targets."""
        out: dict[str, torch.Tensor] = {}
        for block in self.blocks:
            norms = block.norms(self._workspace(block)).to(torch.float64)
            best = torch.full((len(self.groups),), -1.0, dtype=torch.float64, device=norms.device)
            best.scatter_reduce_(0, block.group, norms, "amax")
            for i, group in enumerate(self.groups):
                value = best[i].cpu()
                if value >= 0:
                    out[group] = torch.maximum(out[group], value) if group in out else value
        return {g: float(out[g]) for g in self.groups if g in out}


def _device(block: _Block) -> torch.device:
    return block.w0.device if isinstance(block, _RowBlock) else block.d0.device


def _dtype(block: _Block) -> torch.dtype:
    return block.w0.dtype if isinstance(block, _RowBlock) else block.d0.dtype


def _block_rows(block: _Block) -> list[tuple[Target, int]]:
    if isinstance(block, _RowBlock):
        return [(s.target, s.stop - s.start) for s in block.segments]
    return [(t, t.param.numel()) for t in block.targets]


def _chunks(
    members: list[Target], length: int, limit: int, *, whole: bool
) -> list[list[_Segment]]:
    """Pack the rows of ``members`` into chunks of at most ``limit`` elements (0: one chunk)."""
    if not limit:
        return [[_Segment(t, 0, 1 if whole else t.param.shape[0]) for t in members]]
    rows_per_chunk = max(1, limit // length)
    chunks: list[list[_Segment]] = [[]]
    free = rows_per_chunk
    for target in members:
        start, total = 0, 1 if whole else target.param.shape[0]
        while start < total:
            if free == 0:
                chunks.append([])
                free = rows_per_chunk
            stop = min(total, start + free)
            chunks[-1].append(_Segment(target, start, stop))
            free -= stop - start
            start = stop
    return chunks
