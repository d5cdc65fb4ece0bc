"""Tensors with one learned radius each, read as blocks of equal-length rows.

The learned-radius methods (FTP, TPGM) keep one scalar radius ``g_p`` per constrained tensor
``p`` and rescale each row of ``D = W - W0`` by ``min(1, g_p / n_r)``; their radius updates
need row-wise dot products summed per tensor. A :class:`RowSet` sorts the tensors' rows by
length, device and dtype into ``[R, L]`` blocks (one ``cat`` gathers a block) with, per row,
the index of its tensor, so that a whole step is a handful of batched ops per block and a
``scatter`` per block to or from the per-tensor vectors: no loop of small kernels per tensor.

A tensor is read in one of four layouts:

* ``rows``: one row per output unit (a conv weight ``[out, in, kh, kw]`` has ``out`` rows of
  ``in * kh * kw``), the MARS rows;
* ``columns``: the MARS rows of a matrix stored transposed, ``[in, out]`` (transformers'
  ``Conv1D``): one row per column, read through the strided view ``W.T``;
* ``whole``: the whole tensor as one row (a bias under the reference's ``mars`` rule, which
  sums over every dimension of a 1-D tensor; any tensor under ``frob``);
* ``elements``: every entry its own row (normalisation scales, element-wise).

A tensor may also carry a *multiplier*: the value constrained is then ``param * m()``, read
afresh on every call (BatchNorm's scale through its inference diagonal
``gamma / sqrt(running_var + eps)``, whose variance changes as the model trains). Values are
gathered multiplied, gradients divided (they are taken with respect to the value), and
values are written back divided.

Example:
    >>> import torch
    >>> w, b = torch.ones(3, 4), torch.ones(3)
    >>> rows = RowSet([w, b], ["rows", "whole"], anchors=[torch.zeros(3, 4), torch.zeros(3)])
    >>> [tuple(block.anchor.shape) for block in rows.blocks]
    [(3, 4), (1, 3)]
    >>> rows.tensor_max(rows.row_norms(rows.offsets(rows.gather())))
    tensor([4., 3.])
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from tether.finetune.regularizers._targets import row_view


Layout = Literal["rows", "columns", "whole", "elements"]
RowNorm = Literal["l1", "l2"]

EPS = 1e-8
"""Added to every row norm (the references' guard against a row that has not moved)."""

Multiplier = Callable[[], torch.Tensor]
"""The factor, shaped as the tensor, from a parameter to the value constrained."""


def _rows_of(tensor: torch.Tensor, layout: Layout) -> torch.Tensor:
    if layout == "columns":
        return row_view(tensor, whole=False, transposed=True)
    if layout == "elements":
        return tensor.reshape(-1, 1) if tensor.is_contiguous() else row_view(tensor, whole=True).T
    return row_view(tensor, whole=layout == "whole" or tensor.dim() < 2)


@dataclass(frozen=True)
class Block:
    """Rows of one length, dtype and device, from one or several tensors.

    Attributes:
        members: indices (into the row set's tensors) of the tensors whose rows these are.
        owner: ``[R]`` the tensor index of each row, on the block's device.
        anchor: ``[R, L]`` W0 of the rows.
    """

    members: tuple[int, ...]
    owner: torch.Tensor
    anchor: torch.Tensor


class RowSet:
    """The rows of ``tensors`` in blocks, with per-tensor reductions.

    Args:
        tensors: the constrained tensors (parameters), read and written in place.
        layouts: one :data:`Layout` per tensor.
        anchors: W0 per tensor (copied, stacked by block); ``None``: the current values.
        multipliers: one :data:`Multiplier` or ``None`` per tensor (default: none).
    """

    def __init__(
        self,
        tensors: Sequence[torch.Tensor],
        layouts: Sequence[Layout],
        *,
        anchors: Sequence[torch.Tensor] | None = None,
        multipliers: Sequence[Multiplier | None] | None = None,
    ) -> None:
        if len(layouts) != len(tensors):
            raise ValueError(f"{len(tensors)} tensors but {len(layouts)} layouts")
        self.tensors = list(tensors)
        self.layouts = list(layouts)
        self.multipliers = list(multipliers) if multipliers is not None else [None] * len(tensors)
        if len(self.multipliers) != len(tensors):
            raise ValueError(f"{len(tensors)} tensors but {len(self.multipliers)} multipliers")
        sources = [
            self._value(i, t.detach())
            for i, t in enumerate(self.tensors if anchors is None else anchors)
        ]
        by_key: dict[tuple[int, torch.device, torch.dtype], list[int]] = {}
        for i, (tensor, layout) in enumerate(zip(self.tensors, self.layouts, strict=True)):
            length = _rows_of(tensor.detach(), layout).shape[1]
            by_key.setdefault((length, tensor.device, tensor.dtype), []).append(i)
        self.blocks: list[Block] = []
        for (_, device, _), members in by_key.items():
            views = [self._view(sources[i].detach(), i) for i in members]
            sizes = [len(v) for v in views]
            owner = torch.repeat_interleave(torch.tensor(members), torch.tensor(sizes))
            self.blocks.append(Block(tuple(members), owner.to(device), torch.cat(views).clone()))
        devices = {t.device for t in self.tensors}
        self.device = devices.pop() if len(devices) == 1 else torch.device("cpu")

    def __len__(self) -> int:
        return len(self.tensors)

    def _view(self, tensor: torch.Tensor, i: int) -> torch.Tensor:
        return _rows_of(tensor, self.layouts[i])

    def _value(self, i: int, tensor: torch.Tensor, *, gradient: bool = False) -> torch.Tensor:
        """The constrained value of tensor ``i`` (or, ``gradient``, a gradient with respect to
        it) from the parameter's."""
        multiplier = self.multipliers[i]
        if multiplier is None:
            return tensor
        return tensor / multiplier() if gradient else tensor * multiplier()

    def gather(
        self, tensors: Sequence[torch.Tensor] | None = None, *, gradients: bool = False
    ) -> list[torch.Tensor]:
        """Each block's rows of the constrained values of ``tensors`` (default: the tensors
        themselves; ``gradients``: gradients with respect to them) as ``[R, L]``."""
        source = self.tensors if tensors is None else tensors
        out = []
        for block in self.blocks:
            views = [
                self._view(self._value(i, source[i].detach(), gradient=gradients), i)
                for i in block.members
            ]
            out.append(views[0] if len(views) == 1 else torch.cat(views))
        return out

    def offsets(self, values: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``values - W0`` per block (new tensors)."""
        return [v - b.anchor for v, b in zip(values, self.blocks, strict=True)]

    @staticmethod
    def row_norms(offsets: Sequence[torch.Tensor], norm: RowNorm = "l1") -> list[torch.Tensor]:
        """``||row|| + EPS`` per block: the l1 norm (MARS rows) or the l2 norm."""
        if norm == "l1":
            return [d.abs().sum(dim=1).add_(EPS) for d in offsets]
        return [torch.linalg.vector_norm(d, dim=1).add_(EPS) for d in offsets]

    def _per_tensor(self, reference: torch.Tensor | None) -> torch.Tensor:
        dtype = reference.dtype if reference is not None else torch.float32
        return torch.zeros(len(self.tensors), device=self.device, dtype=dtype)

    def tensor_sum(self, per_row: Sequence[torch.Tensor]) -> torch.Tensor:
        """``[T]``: the sum of each tensor's row values."""
        out = self._per_tensor(per_row[0] if per_row else None)
        for values, block in zip(per_row, self.blocks, strict=True):
            out.index_add_(0, block.owner.to(out.device), values.to(out.device, out.dtype))
        return out

    def tensor_max(self, per_row: Sequence[torch.Tensor]) -> torch.Tensor:
        """``[T]``: the largest of each tensor's row values."""
        out = self._per_tensor(per_row[0] if per_row else None).fill_(-torch.inf)
        for values, block in zip(per_row, self.blocks, strict=True):
            out.scatter_reduce_(
                0, block.owner.to(out.device), values.to(out.device, out.dtype), reduce="amax"
            )
        return out

    def tensor_min(self, per_row: Sequence[torch.Tensor]) -> torch.Tensor:
        """``[T]``: the smallest of each tensor's row values."""
        out = self._per_tensor(per_row[0] if per_row else None).fill_(torch.inf)
        for values, block in zip(per_row, self.blocks, strict=True):
            out.scatter_reduce_(
                0, block.owner.to(out.device), values.to(out.device, out.dtype), reduce="amin"
            )
        return out

    def expand(self, per_tensor: torch.Tensor) -> list[torch.Tensor]:
        """Each block's ``[R]`` copy of a per-tensor vector (its rows' tensors' values)."""
        return [per_tensor.to(b.owner.device)[b.owner] for b in self.blocks]

    def scales(self, radii: torch.Tensor, norms: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``min(1, g_p / n_r)`` per row: 1 for a row inside its tensor's ball."""
        return [
            torch.clamp(r / n, max=1.0) for r, n in zip(self.expand(radii), norms, strict=True)
        ]

    def rescaled(
        self, ends: Sequence[torch.Tensor], scales: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """``W0 + s (end - W0)`` per block; a row with ``s == 1`` is ``end`` bit for bit."""
        return [
            torch.lerp(b.anchor, end, s.unsqueeze(1).to(end.dtype))
            for b, end, s in zip(self.blocks, ends, scales, strict=True)
        ]

    def write_(self, values: Sequence[torch.Tensor]) -> None:
        """Copy each block's ``[R, L]`` rows of values back into its tensors, in place."""
        for block, rows in zip(self.blocks, values, strict=True):
            views = [self._view(self.tensors[i].detach(), i) for i in block.members]
            pieces = list(rows.split([len(v) for v in views]))
            for k, i in enumerate(block.members):
                multiplier = self.multipliers[i]
                if multiplier is not None:
                    pieces[k] = pieces[k] / self._view(multiplier(), i)
            torch._foreach_copy_(views, pieces)

    def split(self, values: Sequence[torch.Tensor], *, params: bool = False) -> list[torch.Tensor]:
        """Per-tensor tensors (shaped as the tensors) from per-block rows (differentiable);
        ``params``: the parameters those values stand for (divided by their multipliers)."""
        out: list[torch.Tensor | None] = [None] * len(self.tensors)
        for block, rows in zip(self.blocks, values, strict=True):
            sizes = [len(self._view(self.tensors[i].detach(), i)) for i in block.members]
            for i, piece in zip(block.members, rows.split(sizes), strict=True):
                tensor = _unrows(piece, self.tensors[i], self.layouts[i])
                multiplier = self.multipliers[i]
                if params and multiplier is not None:
                    tensor = tensor / multiplier()
                out[i] = tensor
        return [t for t in out if t is not None]


def _unrows(rows: torch.Tensor, like: torch.Tensor, layout: Layout) -> torch.Tensor:
    """The inverse of :func:`_rows_of` for a tensor shaped and strided as ``like``."""
    if layout == "columns":
        return rows.T
    if like.is_contiguous():
        return rows.reshape(like.shape)
    # channels-last conv weight: rows are [out, kh, kw, in]
    out, channels, kh, kw = like.shape
    if layout == "elements":
        rows = rows.reshape(1, -1)
    return rows.reshape(out, kh, kw, channels).permute(0, 3, 1, 2)
