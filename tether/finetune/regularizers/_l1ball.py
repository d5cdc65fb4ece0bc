"""Euclidean projection of many rows onto l1 balls at once (Duchi et al., ICML 2008)."""

from __future__ import annotations

import torch


def project_rows_l1(rows: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """The nearest point to each row inside the l1 ball of its own radius.

    For a row ``v`` with ``||v||_1 > r`` the projection soft-thresholds,
    ``w = sign(v) * max(|v| - theta, 0)``, where ``theta`` makes ``||w||_1 = r``: with
    ``mu`` the magnitudes sorted in decreasing order and ``rho`` the largest ``j`` such
    that ``mu_j > (sum_{i<=j} mu_i - r) / j``, ``theta = (sum_{i<=rho} mu_i - r) / rho``
    (Duchi, Shalev-Shwartz, Singer, Chandra, "Efficient projections onto the l1-ball for
    learning in high dimensions", ICML 2008, Fig. 1). Rows already inside are returned
    unchanged. Vectorised over rows: one sort and one cumulative sum in all.

    Args:
        rows: ``[R, L]`` matrix.
        radius: ``[R]`` non-negative radii.

    Example:
        >>> project_rows_l1(torch.tensor([[3.0, -1.0]]), torch.tensor([2.0]))
        tensor([[2., -0.]])
    """
    if rows.numel() == 0:
        return rows.clone()
    magnitude = rows.abs()
    mu, _ = torch.sort(magnitude, dim=1, descending=True)
    cumulative = mu.cumsum(dim=1) - radius.unsqueeze(1)
    j = torch.arange(1, rows.shape[1] + 1, device=rows.device, dtype=rows.dtype)
    rho = (mu > cumulative / j).sum(dim=1, keepdim=True).clamp_(min=1)
    theta = cumulative.gather(1, rho - 1) / rho.to(rows.dtype)
    inside = magnitude.sum(dim=1, keepdim=True) <= radius.unsqueeze(1)
    projected = rows.sign() * (magnitude - theta).clamp_(min=0)
    return torch.where(inside, rows, projected)
