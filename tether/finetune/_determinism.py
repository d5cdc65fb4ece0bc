"""What makes a result cached on disk the same whichever process computed it first.

Torch's CPU kernels split their reductions (the sums inside matrix products, convolutions,
their gradients and batch statistics) across the intra-op threads, so the rounding of a float
result depends on ``torch.get_num_threads()``, and over many training steps the roundings
grow into different networks. A search sets that count per trial (``TETHER_NUM_THREADS``);
a cache shared by its trials would otherwise hold whatever the first trial to fill it
computed. So the cached float results (the digits source network, DELTA's channel scores,
the Fisher diagonal) are computed under :func:`cache_threads`, and their keys name what one
thread count does not pin down (:func:`kernel_identity`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


CACHE_THREADS = 1
"""One thread: the order of every CPU sum is then fixed, whatever the machine's core count."""


@contextmanager
def cache_threads() -> Iterator[None]:
    """Run the block with :data:`CACHE_THREADS` intra-op threads, then restore the caller's.

    Wrap the computation of a cached result only: reading a cache needs no fixed count, and
    the caller's count (a trial's share of the CPU) applies again once the result is made.

    Example:
        >>> before = torch.get_num_threads()
        >>> with cache_threads():
        ...     torch.get_num_threads()
        1
        >>> torch.get_num_threads() == before
        True
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(CACHE_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def kernel_identity(device: torch.device) -> dict[str, str]:
    """What a cached float result depends on beyond its recipe, for its cache key.

    The torch version (kernels and their summation order change between releases) and the
    device type (a CUDA kernel does not round like the CPU one), so that a cache shared by
    two installs or by CPU and GPU trials keeps one entry for each.

    Example:
        >>> kernel_identity(torch.device("cpu"))["device"]
        'cpu'
    """
    return {"torch": str(torch.__version__), "device": device.type}
