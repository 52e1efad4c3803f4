"""Every thread count in one place: the one thread rule (a single small image runs its torch work on one thread,
docs/design.md#threads), faiss's OpenMP count, BLAS on one thread, and the process-wide setting.

Examples
--------
>>> import numpy as np
>>> with single_image_threads(np.zeros((1, 28, 28, 1), np.uint8)):    # one thread inside
...     pass
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["SINGLE_THREAD_MAX_INPUT", "one_torch_thread", "single_image_threads"]

#: Images of at most this many values (C·H·W) run their single-image forward pass on one torch thread; larger
#: models keep every thread.
SINGLE_THREAD_MAX_INPUT = 64 * 64 * 3


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread inside the block, in the calling thread; its count as found afterwards.

    The count is per calling thread, so concurrent callers do not undo each other.
    """
    n = torch.get_num_threads()
    if n > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n > 1:
            torch.set_num_threads(n)


def single_image_threads(images: np.ndarray) -> contextlib.AbstractContextManager:
    """:func:`one_torch_thread` for one image of at most :data:`SINGLE_THREAD_MAX_INPUT` values, else nothing.

    Parameters
    ----------
    images : ndarray (N, H, W, C) or (N, C, H, W)
        The batch about to go through the model.

    Returns
    -------
    context manager
    """
    one = len(images) == 1 and images[0].size <= SINGLE_THREAD_MAX_INPUT
    return one_torch_thread() if one else contextlib.nullcontext()

def set_faiss_threads(n: int) -> None:
    """Set faiss's OpenMP thread count (one thread is fastest for single queries)."""
    import faiss

    faiss.omp_set_num_threads(max(1, int(n)))


@contextlib.contextmanager
def faiss_threads(n: int) -> Iterator[None]:
    """faiss's OpenMP thread count set to ``n`` inside the block, put back after.

    OpenMP keeps the count per calling thread, so this does not change other threads' searches.
    """
    import faiss

    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(old)


def one_blas_thread() -> contextlib.AbstractContextManager:
    """BLAS (numpy, scipy) on one thread inside the block: for many small products, where threads only contend.

    ``threadpoolctl`` comes with scikit-learn; without it this is a no-op.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def set_process_threads(n: int) -> int:
    """torch's and faiss's CPU thread counts for the whole process set to ``n`` (0: every core); returns n."""
    import os

    import faiss

    if not n:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    return n
