"""Names used in the public API's annotations. Annotations only: nothing here is checked at run time."""
from __future__ import annotations

from typing import Any, Callable, Tuple

#: A CuPy array, or any CUDA array CuPy can use without a copy (``__cuda_array_interface__`` or DLPack).
Array = Any
#: flash-attn's (left, right) sliding window; -1 leaves a side unbounded.
Window = Tuple[int, int]
#: (dq, dk, dv), or (dq, dk, dv, dbias) where the bias's gradient is asked for.
Grads = Tuple[Array, ...]
#: flash_attn_vjp's second result: dout -> Grads.
Vjp = Callable[[Array], Grads]
