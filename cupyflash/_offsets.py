"""Checks of varlen offsets (cu_seqlens) that do not wait for the GPU on every call.

flash-attn's varlen calls take the offsets as device arrays. Checking their values on the host reads them back,
which waits for everything queued before on the stream: measured on the H100 (eighteenth session), that wait cost
a 16k-token forward 0.1-0.16 ms a call (0.48-1.05 ms of work), and it cannot happen under CUDA graph capture.
Callers reuse their offsets arrays for every layer of a step, so an array's values are checked on its first use
only (the same CuPy array object, alive since, with the same totals and max_seqlens; another library's arrays
come in as new CuPy views at every call, and are checked at every call). After that the kernels guard
themselves: each block clamps its entry into the packed tensors and reports an entry that needed it in a status
word of pinned host memory (cuda_src/coords.cuh PackedRows), which the next call reads without waiting, and
raises. Bad offsets thus never reach past the tensors and never pass silently: those of an array's first use
raise before any launch; those written into an array after its first use raise at a later call.
"""
from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

from ._validate import check_cu_seqlens_values

_CHECKED_CAPACITY = 64  # offsets arrays remembered as checked (a few per training step at most)
_lock = threading.Lock()
_checked: OrderedDict = OrderedDict()
_status: dict[int, tuple] = {}  # device -> (pinned memory, its int32 view, the device's address of it)


def status_pointer(device: int) -> int:
    """The device address of ``device``'s status word (pinned host memory: with unified addressing, which every
    64-bit platform CUDA 12 supports, the host's address)."""
    return _status_word(device)[2]


def _status_word(device: int):
    word = _status.get(device)
    if word is None:
        import cupy
        import numpy

        with _lock, cupy.cuda.Device(device):
            word = _status.get(device)
            if word is None:
                memory = cupy.cuda.alloc_pinned_memory(4)
                view = numpy.frombuffer(memory, numpy.int32, 1)
                view[0] = 0
                word = _status[device] = (memory, view, memory.ptr)  # UVA: the kernels' address too
    return word


def raise_earlier_failures(device: int) -> None:
    """Raise if a kernel launched by an earlier varlen call on ``device`` clamped offsets (and clear the word)."""
    word = _status.get(device)
    if word is not None and word[1][0]:
        word[1][0] = 0
        with _lock:
            _checked.clear()  # an array checked once has been rewritten: check every array again
        raise ValueError("cu_seqlens given to an earlier flash_attn_varlen call (after the first call that used "
                         "those arrays) broke flash-attn's rules (start at 0, never decrease, end at total_q / "
                         "total_k, no sequence longer than max_seqlen): the kernels kept to the packed tensors, but "
                         "that call's results are wrong")


def check(cu_q, cu_k, problem) -> None:
    """Raise before any launch if the offsets break flash-attn's rules (read from the GPU on their first use, see
    the module's docstring), or if an earlier call's kernels found offsets that did."""
    raise_earlier_failures(problem.device)
    key = (problem.device, cu_q.data.ptr, cu_k.data.ptr, cu_q.size, problem.total_q, problem.total_k,
           problem.seqlen_q, problem.seqlen_k)
    with _lock:
        refs = _checked.get(key)
        if refs is not None and refs[0]() is cu_q and refs[1]() is cu_k:
            _checked.move_to_end(key)
            return
    offsets_q, offsets_k = (x.get().tolist() for x in (cu_q, cu_k))
    check_cu_seqlens_values("cu_seqlens_q", offsets_q, problem.total_q, problem.seqlen_q)
    check_cu_seqlens_values("cu_seqlens_k", offsets_k, problem.total_k, problem.seqlen_k)
    with _lock:
        _checked[key] = (weakref.ref(cu_q), weakref.ref(cu_k))  # the arrays themselves: not a reused address
        _checked.move_to_end(key)
        if len(_checked) > _CHECKED_CAPACITY:
            _checked.popitem(last=False)


def forget_checked() -> None:
    """Check every offsets array again on its next use (tests; a caller that rewrites offsets in place)."""
    with _lock:
        _checked.clear()
