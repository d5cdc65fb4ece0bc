"""The vectorised engine behind every distance regulariser.

At construction the constrained tensors are sorted into *blocks*: rows of one length, one
dtype and one device, stacked into a ``[R, L]`` matrix. A step then costs a handful of
batched ops per block instead of several kernels per tensor (rescale mode):

1. ``t = W - W0``              one read of W and W0 (a block spanning several tensors first
                               gathers their rows with one ``cat``)
2. ``n = sum(|t|, rows)``      ``abs_`` in place, then ``sum`` (MARS: on the CPU ~3x faster than
                               ``vector_norm(ord=1)``); Frobenius: ``vector_norm``
3. ``s = fmin(r / n, 1)``      1 inside the ball (``fmin`` also turns ``0 / 0`` into 1)
4. ``W = lerp(W0, W, s)``      one read-modify-write of W, straight into the parameter (or
                               one ``_foreach_copy_`` back into several tensors)

so that ``W = W0 + min(1, r/n) (W - W0)``: the radial rescaling of the papers. A row inside
its ball is left bit-for-bit unchanged (``lerp`` with weight 1 returns its end point), and a
block whose radii are all infinite is skipped.

On the CPU a block is cut into *chunks* of about ``chunk`` elements (default 2**20, 4 MB of
float32), small enough that W, W0 and ``t`` (12 MB) stay in the last-level cache between
steps 1 and 4: the memory traffic is then one read of W and W0 and one write of W. A tensor of
at least ``chunk / 16`` elements gets chunks of its own, row slices projected in place with
no copy; smaller tensors are packed whole, several to a chunk, so that they share the fixed
cost of a chunk's eight ops (~20 us) at the price of a copy in and out. Chunks whose rows are
all inside skip step 4 (one host read per chunk). Buffers and parameter views are made once,
so a CPU step allocates (and page-faults) nothing. Smaller chunks (L2-sized) or larger ones
were slower on a 32 MB-L3 EPYC (``benchmarks/projection.py``); pass ``chunk`` to tune.

On other devices a block is one chunk and nothing is read back to the host: kernel launches
dominate there, six to eight per block (ResNet-101: 11 row blocks and one BatchNorm block).

Element-wise (BatchNorm / LayerNorm) targets form one small diagonal block per device.

A weight stored transposed (transformers' ``Conv1D``, ``[in, out]``) enters through the strided
view ``W.T`` (:meth:`Target.rows`): every step above reads and writes through views and
``out=`` arguments, never ``view``, so its rows need no copy; a chunk of its own gets its
``t`` buffer in the same strides, so that step 1 runs over memory in order rather than
across it.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
import math

import torch

from tether.finetune.regularizers._diagonal import DiagBlock
from tether.finetune.regularizers._diagonal import all_infinite
from tether.finetune.regularizers._l1ball import project_rows_l1
from tether.finetune.regularizers._reference import Reference
from tether.finetune.regularizers._targets import Target
from tether.finetune.regularizers.config import NORMS
from tether.finetune.regularizers.config import Norm


DEFAULT_CPU_CHUNK = 1 << 20
PACK_FRACTION = 16  # tensors under chunk / PACK_FRACTION elements share chunks


@dataclass(frozen=True)
class _Segment:
    target: Target
    start: int  # first row of this segment in the target's row view
    stop: int


@dataclass(frozen=True)
class _Buffers:
    """Scratch space for one ``[R, L]`` chunk."""

    offsets: torch.Tensor  # [R, L]: t = W - W0, then |t|
    gathered: torch.Tensor | None  # [R, L]: W of a packed chunk, gathered from its tensors
    norms: torch.Tensor  # [R]: the row norms, then the scale factors
    column: torch.Tensor  # [R, 1]: ``norms`` as a column, to broadcast along rows


class _Workspace:
    """Scratch space shared by the chunks of one device and dtype.

    When ``persistent`` (the CPU) the buffers are allocated once, for the largest chunk, and
    each chunk keeps views of them; otherwise every call allocates afresh, which a caching
    allocator makes free and which holds no memory between steps.
    """

    def __init__(
        self,
        device: torch.device,
        dtype: torch.dtype,
        *,
        elements: int,
        rows: int,
        persistent: bool,
    ) -> None:
        self.device, self.dtype = device, dtype
        self.persistent = persistent
        self._flat: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        if persistent:
            self._flat = (
                torch.empty(elements, device=device, dtype=dtype),
                torch.empty(elements, device=device, dtype=dtype),
                torch.empty(rows, device=device, dtype=dtype),
            )

    def buffers(self, rows: int, length: int, *, packed: bool, transposed: bool) -> _Buffers:
        """Views for a ``[rows, length]`` chunk; ``transposed``: offsets stored ``[length,
        rows]`` and viewed ``.T``, strided as the rows of a transposed weight are."""
        shape = (length, rows) if transposed else (rows, length)
        if self._flat is None:
            offsets = torch.empty(shape, device=self.device, dtype=self.dtype)
            gathered = torch.empty_like(offsets) if packed else None
            norms = torch.empty((rows,), device=self.device, dtype=self.dtype)
        else:
            n = rows * length
            offsets = self._flat[0][:n].view(shape)
            gathered = self._flat[1][:n].view(shape) if packed else None
            norms = self._flat[2][:rows]
        if transposed:
            offsets = offsets.T
        return _Buffers(offsets, gathered, norms, norms.unsqueeze(1))


class _RowBlock:
    """Rows of equal length from one or several tensors, projected as one matrix."""

    def __init__(
        self, segments: list[_Segment], reference: Reference, *, whole: bool, ord: float
    ) -> None:
        self.segments = segments
        self.whole = whole
        self.ord = ord
        self.counts = [s.stop - s.start for s in segments]
        self._reference = reference
        self._strides: list[tuple[int, ...]] = []
        self.views: list[torch.Tensor] = []
        self.w0 = torch.empty(0)
        self.refresh_views()
        self.n_rows, self.length = self.w0.shape
        self.one = torch.ones((), device=self.w0.device, dtype=self.w0.dtype)
        self.radius = torch.empty(0)
        self.free = False
        self.group = torch.empty(0, dtype=torch.long)
        self._work: _Workspace | None = None
        self._buffers: _Buffers | None = None

    @property
    def packed(self) -> bool:
        return len(self.segments) > 1

    def attach(self, work: _Workspace) -> None:
        """Take scratch space from ``work`` (views made once when it is persistent)."""
        self._work = work
        if work.persistent:
            self._buffers = self._buffers_from(work)

    def _scratch(self) -> _Buffers:
        if self._buffers is not None:
            return self._buffers
        if self._work is None:
            raise RuntimeError("a row block needs a workspace (attach) before use")
        return self._buffers_from(self._work)

    def _buffers_from(self, work: _Workspace) -> _Buffers:
        """A transposed weight alone in its chunk gets offsets in its own strides, so that
        ``W - W0`` runs over memory in order (a packed chunk gathers contiguous rows)."""
        transposed = not self.packed and not self.whole and self.segments[0].target.transposed
        return work.buffers(self.n_rows, self.length, packed=self.packed, transposed=transposed)

    def refresh_views(self) -> None:
        """Take the parameters' row views again (after their storage was replaced).

        W0 follows the parameters' memory layout (``channels_last`` or not), so that row
        elements line up one to one; it is rebuilt if that layout changed.
        """
        params = [s.target.param.detach() for s in self.segments]
        self.views = [
            s.target.rows(p, whole=self.whole)[s.start : s.stop]
            for p, s in zip(params, self.segments, strict=True)
        ]
        strides = [p.stride() for p in params]
        if strides != self._strides:
            self.w0 = self._reference_rows(params)
            self._strides = strides

    def _reference_rows(self, params: list[torch.Tensor]) -> torch.Tensor:
        """W0 as one ``[R, L]`` matrix (a view of the reference if it can be); the head's is 0."""
        refs = []
        for p, s in zip(params, self.segments, strict=True):
            ref = self._reference.weight(s.target.name)
            rows = s.target.rows(ref, whole=self.whole)[s.start : s.stop]
            if ref.stride() != p.stride():  # store it in the parameter's layout
                like = torch.empty_like(p).copy_(ref)
                rows = s.target.rows(like, whole=self.whole)[s.start : s.stop].clone()
            refs.append(rows)
        if len(refs) == 1 and self.segments[0].target.group != "head":
            return refs[0]  # no second copy of a tensor that is a chunk on its own
        w0 = torch.cat(refs)
        for ref, s in zip(w0.split(self.counts), self.segments, strict=True):
            if s.target.group == "head":
                ref.zero_()
        return w0

    def set_radius(self, radius: torch.Tensor) -> None:
        self.radius = radius
        self.free = all_infinite(radius)

    def reference_norms(self) -> torch.Tensor:
        return _row_norms(self.w0.abs() if self.ord == 1.0 else self.w0, self.ord)

    def _rows(self, buffers: _Buffers) -> torch.Tensor:
        """W as one ``[R, L]`` matrix: a view of the parameter, or gathered from several."""
        if buffers.gathered is None:
            return self.views[0]
        return torch.cat(self.views, out=buffers.gathered)

    def _norms(self, w: torch.Tensor, buffers: _Buffers) -> torch.Tensor:
        """Row norms of ``W - W0`` in ``buffers.norms`` (the offsets buffer is overwritten)."""
        t = torch.sub(w, self.w0, out=buffers.offsets)
        return _row_norms(t.abs_() if self.ord == 1.0 else t, self.ord, out=buffers.norms)

    def norms(self) -> torch.Tensor:
        buffers = self._scratch()
        return self._norms(self._rows(buffers), buffers)

    def project(self, *, exact: bool, sync: bool) -> None:
        """Move every row outside its ball back onto it; ``sync`` allows a host read."""
        if self.free:
            return
        buffers = self._scratch()
        w = self._rows(buffers)
        if exact and self.ord == 1.0:
            self._project_exact(w, buffers)
            return
        scale = torch.div(self.radius, self._norms(w, buffers), out=buffers.norms)
        torch.fmin(scale, self.one, out=scale)
        if sync and scale.min().item() >= 1.0:
            return
        torch.lerp(self.w0, w, buffers.column, out=w)
        if buffers.gathered is not None:
            torch._foreach_copy_(self.views, list(w.split(self.counts)))

    def _project_exact(self, w: torch.Tensor, buffers: _Buffers) -> None:
        """Rows outside their ball become ``W0 + proj(t)`` (Duchi et al.); the rest stay."""
        t = torch.sub(w, self.w0, out=buffers.offsets)
        rows = (_row_norms(t.abs(), self.ord) > self.radius).nonzero().squeeze(1)
        if rows.numel() == 0:
            return
        w.index_copy_(0, rows, project_rows_l1(t[rows], self.radius[rows]).add_(self.w0[rows]))
        if buffers.gathered is not None:
            torch._foreach_copy_(self.views, list(w.split(self.counts)))


def _row_norms(t: torch.Tensor, ord: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """Norm of each row; for l1, ``t`` must already hold magnitudes (abs + sum is the fast way)."""
    if ord == 1.0:
        return t.sum(dim=1) if out is None else torch.sum(t, dim=1, out=out)
    if out is None:
        return torch.linalg.vector_norm(t, ord, dim=1)
    return torch.linalg.vector_norm(t, ord, dim=1, out=out)


_Block = _RowBlock | DiagBlock


class ProjectionPlan:
    """Blocks of targets for one norm, with per-row group ids; radii attached later.

    Args:
        targets: the constrained tensors (see :func:`collect_targets`).
        reference: W0 for every target (the head's is replaced by zero).
        groups: group names, indexing the per-row group ids.
        norm: ``"mars"`` (rows, l1) or ``"frob"`` (whole tensors, l2).
        chunk: elements per CPU chunk; ``None`` picks :data:`DEFAULT_CPU_CHUNK` on the CPU and
            no chunking on other devices; ``0`` never chunks.
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
        if chunk is not None and chunk < 0:
            raise ValueError(f"chunk must be >= 0 elements, got {chunk!r}")
        self.norm = norm
        self.groups = tuple(groups)
        self._targets = list(targets)
        self._chunk = chunk
        self._radius_of: Callable[[_Block], torch.Tensor] | None = None
        self._build(reference)

    def _build(self, reference: Reference) -> None:
        """Sort the targets into blocks against ``reference``, on the parameters' devices."""
        self.blocks: list[_Block] = []
        whole = self.norm == "frob"
        ord = 1.0 if self.norm == "mars" else 2.0
        matrices: dict[tuple[torch.device, torch.dtype, int], list[Target]] = {}
        diagonals: dict[tuple[torch.device, torch.dtype, bool], list[Target]] = {}
        for target in self._targets:
            p = target.param
            if target.kind == "matrix":
                length = p.numel() if whole else p.numel() // max(target.n_rows, 1)
                matrices.setdefault((p.device, p.dtype, length), []).append(target)
            else:
                scaled = target.running_var() is not None
                diagonals.setdefault((p.device, p.dtype, scaled), []).append(target)
        for (device, _, length), members in matrices.items():
            limit = self._chunk if self._chunk is not None else _default_chunk(device)
            for segments in _chunks(members, length, limit, whole=whole):
                self.blocks.append(_RowBlock(segments, reference, whole=whole, ord=ord))
        for (_, _, scaled), members in diagonals.items():
            self.blocks.append(DiagBlock(members, reference, scaled=scaled))
        self._attach_workspaces()
        self._reference = reference
        self._params = [t.param for t in self._targets]
        self._storage = self._pointers()
        self._placement = self._placements()
        index = {g: i for i, g in enumerate(self.groups)}
        for block in self.blocks:
            ids = [
                torch.full((n,), index[t.group], dtype=torch.long) for t, n in _block_rows(block)
            ]
            block.group = torch.cat(ids).to(_device(block))

    def _attach_workspaces(self) -> None:
        """One workspace per device and dtype, sized for the largest of its chunks."""
        sizes: dict[tuple[torch.device, torch.dtype], tuple[int, int]] = {}
        for row_block in self._row_blocks():
            key = (row_block.w0.device, row_block.w0.dtype)
            elements, rows = sizes.get(key, (0, 0))
            sizes[key] = (max(elements, row_block.w0.numel()), max(rows, row_block.n_rows))
        workspaces = {
            key: _Workspace(*key, elements=e, rows=r, persistent=key[0].type == "cpu")
            for key, (e, r) in sizes.items()
        }
        for row_block in self._row_blocks():
            row_block.attach(workspaces[(row_block.w0.device, row_block.w0.dtype)])

    def _row_blocks(self) -> list[_RowBlock]:
        return [b for b in self.blocks if isinstance(b, _RowBlock)]

    def _pointers(self) -> list[int]:
        return [p.data_ptr() for p in self._params]

    def _placements(self) -> list[tuple[torch.device, torch.dtype]]:
        return [(p.device, p.dtype) for p in self._params]

    def _check_views(self) -> None:
        """Follow the parameters: new views if a storage was replaced (``channels_last``), the
        whole plan again, W0 and radii moved along, if the model moved (``.to(device)``,
        ``.double()``)."""
        storage = self._pointers()
        if storage == self._storage:
            return
        if self._placements() != self._placement:
            self._build(self._reference.moved(self._targets))
            if self._radius_of is not None:
                self.set_radii(self._radius_of)
            return
        for block in self.blocks:
            block.refresh_views()
        self._storage = storage

    def set_radii(self, radius_of: Callable[[_Block], torch.Tensor]) -> None:
        """Give each block its per-row radii (kept, to be given again if the model moves)."""
        self._radius_of = radius_of
        for block in self.blocks:
            block.set_radius(radius_of(block))

    def group_radius(self, radii: dict[str, float], *, relative: bool) -> None:
        """Attach radii: ``radii[group]`` absolute, or times each row's pretrained norm.

        The head is measured from zero, so its radius is always absolute. An infinite radius
        leaves its rows free (even where the pretrained norm is zero).
        """
        head = self.groups.index("head") if "head" in self.groups else -1
        table = torch.tensor([radii.get(g, math.inf) for g in self.groups], dtype=torch.float64)

        def radius_of(block: _Block) -> torch.Tensor:
            ref = block.reference_norms().to(torch.float64)
            r = table.to(ref.device)[block.group]
            if relative:  # an infinite radius stays infinite, even times a zero norm
                r = torch.where((block.group == head) | r.isinf(), r, r * ref)
            return r.to(_dtype(block))

        self.set_radii(radius_of)

    @torch.no_grad()
    def project_(self, *, exact: bool = False) -> None:
        self._check_views()
        for block in self.blocks:
            block.project(exact=exact, sync=_device(block).type == "cpu")

    @torch.no_grad()
    def distances(self) -> dict[str, float]:
        """The largest distance from the reference in each group that has targets."""
        out: dict[str, torch.Tensor] = {}
        self._check_views()
        for block in self.blocks:
            norms = block.norms().to(torch.float64)
            best = torch.full((len(self.groups),), -1.0, dtype=torch.float64, device=norms.device)
            best.scatter_reduce_(0, block.group, norms, "amax")
            for i, group in enumerate(self.groups):
                value = best[i].cpu()
                if value >= 0:
                    out[group] = torch.maximum(out[group], value) if group in out else value
        return {g: float(out[g]) for g in self.groups if g in out}


def _default_chunk(device: torch.device) -> int:
    return DEFAULT_CPU_CHUNK if device.type == "cpu" else 0


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
    """Group the rows of ``members`` into chunks of at most ``limit`` elements (0: one chunk).

    A tensor of at least ``limit / PACK_FRACTION`` elements gets chunks of its own, near-equal
    row slices projected in place; smaller tensors are packed whole, side by side. No chunk
    holds part of a tensor next to another tensor. A single row longer than ``limit`` is a
    chunk of its own.
    """

    def rows(target: Target) -> int:
        return 1 if whole else target.n_rows

    if not limit:
        return [[_Segment(t, 0, rows(t)) for t in members]]
    capacity = max(1, limit // length)  # rows per chunk
    alone = max(1, limit // PACK_FRACTION // length)  # rows that earn a chunk of their own
    chunks: list[list[_Segment]] = []
    packed: list[_Segment] = []
    free = capacity
    for target in members:
        total = rows(target)
        if total >= alone:
            step = math.ceil(total / math.ceil(total / capacity))
            chunks.extend(
                [_Segment(target, a, min(a + step, total))] for a in range(0, total, step)
            )
            continue
        if total > free:
            chunks.append(packed)
            packed, free = [], capacity
        packed.append(_Segment(target, 0, total))
        free -= total
    if packed:
        chunks.append(packed)
    return chunks
