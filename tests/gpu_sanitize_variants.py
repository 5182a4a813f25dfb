"""Run a small forward and backward of every tile config that fits this GPU, and of every variant with the tiles
the dispatcher picks, for compute-sanitizer:

    compute-sanitizer --tool memcheck  python tests/gpu_sanitize_variants.py [--variants-only] [--head-dims 64,128]
    compute-sanitizer --tool racecheck python tests/gpu_sanitize_variants.py [--variants-only] [--head-dims 64,128]

``--only SECTION ...`` runs some of the sections: tiles, modifiers, biases, masks, packed, dropout, splits (split-KV:
forced key splits, more than the key tiles too, with the modifiers, a bias and a mask, dropout), persistent (the
persistent tiles on more work items than SMs, keyless items after keyed ones, with and without split keys; causal,
first dtype); --variants-only: all but tiles. ``--dtypes float32`` runs float32 inputs (the mma_tf32 family,
precision "highest"; default: float16 and bfloat16).

Seqlens straddle tile edges so partial tiles, masking and the tile skipping all run; two query heads share one
K/V head; packed (varlen) batches run every modifier too, and additive biases of each dtype and broadcast
(with dbias; a pair bias also shared by two batches), and boolean masks, alone and with a bias. Not a pytest
module: the sanitizer wraps the whole process.
"""
import itertools
import sys

import ml_dtypes
import numpy as np

import cupy
import cupyflash as cf
from cupyflash._device import device_limits
from cupyflash.configs import KERNEL_HEAD_DIMS, candidates
from cupyflash.problem import Variant

limits = device_limits(0)
rng = np.random.default_rng(0)
SECTIONS = ("tiles", "modifiers", "biases", "masks", "packed", "dropout", "splits", "persistent")
if "--only" in sys.argv:
    wanted = set(sys.argv[sys.argv.index("--only") + 1:]) & set(SECTIONS)
else:
    wanted = set(SECTIONS) - ({"tiles"} if "--variants-only" in sys.argv else set())
# A subset of the kernel head dims keeps one sanitizer pass within a device command's time limit.
head_dims = ([int(d) for d in sys.argv[sys.argv.index("--head-dims") + 1].split(",")] if "--head-dims" in sys.argv
             else KERNEL_HEAD_DIMS)
dtypes = (sys.argv[sys.argv.index("--dtypes") + 1].split(",") if "--dtypes" in sys.argv
          else ["float16", "bfloat16"])


def arrays(dtype, *shapes):
    if dtype == "float32":
        return [cupy.asarray(rng.standard_normal(s, np.float32)) for s in shapes]
    out = [cupy.asarray(rng.standard_normal(s, np.float32)).astype(cupy.float16) for s in shapes]
    # bf16 runs get the same bits reinterpreted: values are irrelevant to the sanitizer
    return [x.view(ml_dtypes.bfloat16) for x in out] if dtype == "bfloat16" else out


def run(d, dtype, m, n, kw, fwd_config=None, bwd_config=None, dq_config=None, batch=1):
    q, k, dout = arrays(dtype, (batch, m, 2, d), (batch, n, 1, d), (batch, m, 2, d))
    out, lse = cf.flash_attn_func(q, k, k, return_lse=True, config=fwd_config, **kw)
    grads = {"return_dbias": True} if "bias" in kw else {}
    for mode in ({"atomic_dq": True, "config": bwd_config}, {"atomic_dq": False, "config": bwd_config,
                                                              "dq_config": dq_config}):
        cf.flash_attn_backward(dout, q, k, k, out, lse, **mode, **kw, **grads)


count = 0
slopes = cupy.asarray(np.array([0.25, 0.5], np.float32))
for kd in head_dims:
    d = kd - 8 if kd > 32 else 27  # padded columns; 27: a head dim that is not a multiple of 8
    for dtype, causal in itertools.product(dtypes, (False, True)):
        tile_variant = Variant(dtype, precision="highest" if dtype == "float32" else "")
        if "tiles" in wanted:
            kw = {"causal": causal}
            for c in candidates("fwd", limits, kd, tile_variant):
                q, k = arrays(dtype, (1, c.block_m + 3, 2, d), (1, c.block_n + 5, 1, d))
                cf.flash_attn_func(q, k, k, config=c, **kw)
                count += 1
            for c in candidates("bwd", limits, kd, tile_variant):
                run(d, dtype, c.block_m + 3, c.block_n + 5, kw, bwd_config=c)
                count += 2
            for c in candidates("bwd_dq", limits, kd, tile_variant):
                run(d, dtype, c.block_m + 3, c.block_n + 5, kw, dq_config=c)
                count += 1
        if "modifiers" in wanted:
            for window, softcap, alibi in itertools.product(((-1, -1), (40, 7)), (0.0, 20.0), (None, slopes)):
                run(d, dtype, 203, 190, dict(causal=causal, window_size=window, softcap=softcap, alibi_slopes=alibi))
                count += 3
        if "biases" in wanted:
            # additive biases: full float32 (under the cap, with -inf entries), a bf16 key bias, one value per query row
            # (keys broadcast), and a bias whose rows need padding (a per-call copy)
            for shape, bias_dtype in (((1, 2, 203, 190), np.float32), ((1, 1, 1, 190), ml_dtypes.bfloat16),
                                      ((1, 2, 203, 1), np.float16), ((2, 203, 189), np.float32)):
                host = rng.standard_normal(shape).astype(bias_dtype)
                host.flat[::7] = -np.inf
                bias = cupy.asarray(host.view(np.uint16)).view(host.dtype) if host.itemsize == 2 else cupy.asarray(host)
                n = shape[-1] if shape[-1] > 1 else 190
                for softcap in (0.0, 20.0):
                    run(d, dtype, 203, n, dict(causal=causal, softcap=softcap, bias=bias))
                    count += 3
                if shape == (1, 2, 203, 190):  # shared by two batches: grids that take batches fastest
                    run(d, dtype, 203, n, dict(causal=causal, bias=bias), batch=2)
                    count += 3
        if "masks" in wanted:
            # boolean masks: a pair mask with hidden rows, a key-padding mask whose rows need padding (a per-call copy),
            # and a prepared block mask (32 x 32 blocks hidden, shown or random: skipped, unmasked and masked tiles)
            blocks = rng.integers(0, 3, (1, 2, 7, 6)).repeat(32, axis=2).repeat(32, axis=3)[..., :203, :190]
            block_mask = np.where(blocks == 0, False, np.where(blocks == 1, True, rng.random(blocks.shape) < 0.5))
            pair, key_padding = rng.random((1, 2, 203, 190)) < 0.7, rng.random((1, 1, 1, 189)) < 0.7
            for host, prepare in ((pair, False), (key_padding, False), (block_mask, True)):
                mask = cf.prepare_mask(cupy.asarray(host)) if prepare else cupy.asarray(host)
                run(d, dtype, 203, host.shape[-1], dict(causal=causal, softcap=20.0, mask=mask))
                count += 3
            # the block mask with a bias beside it: a key bias (dbias summed over the queries visited) and a full one
            prepared = cf.prepare_mask(cupy.asarray(block_mask))
            for shape in ((1, 1, 1, 190), (1, 2, 203, 190)):
                bias = cupy.asarray(rng.standard_normal(shape).astype(np.float32))
                run(d, dtype, 203, 190, dict(causal=causal, mask=prepared, bias=bias))
                count += 3
            # a block-sparse mask (128 x 128 blocks wholly hidden or shown: the kernels read only its summary), alone
            # and with a pair bias; six key tiles, so that a walk of more tiles than the ring's stages reuses the
            # slots of its stashed entries
            sparse = rng.integers(0, 2, (1, 2, 2, 6)).astype(bool).repeat(128, axis=2).repeat(128, axis=3)
            sparse = cf.prepare_mask(cupy.asarray(sparse[..., :203, :700]))
            pair_bias = cupy.asarray(rng.standard_normal((1, 2, 203, 700)).astype(np.float32))
            for extra in ({}, {"bias": pair_bias}):
                run(d, dtype, 203, 700, dict(causal=causal, mask=sparse, **extra))
                count += 3
        if "packed" in wanted:
            # packed batches: an empty sequence, a length-1 one and ones straddling tile edges, every modifier
            lens_q, lens_k = [203, 0, 1, 70], [190, 9, 0, 131]
            cu_q, cu_k = (cupy.asarray(np.cumsum([0] + lens, dtype=np.int32)) for lens in (lens_q, lens_k))
            q, k, dout = arrays(dtype, (sum(lens_q), 2, d), (sum(lens_k), 1, d), (sum(lens_q), 2, d))
            for window, softcap, alibi in itertools.product(((-1, -1), (40, 7)), (0.0, 20.0), (None, slopes)):
                kw = dict(causal=causal, window_size=window, softcap=softcap, alibi_slopes=alibi)
                out, lse = cf.flash_attn_varlen_func(q, k, k, cu_q, cu_k, 203, 190, return_lse=True, **kw)
                for mode in ({"atomic_dq": True}, {"atomic_dq": False}, {"deterministic": True}):
                    cf.flash_attn_varlen_backward(dout, q, k, k, out, lse, cu_q, cu_k, 203, 190, **mode, **kw)
                count += 4
        if "dropout" in wanted:
            # dropout: plain and with every modifier, with a bias and dbias, and in a packed batch
            drop = dict(dropout_p=0.3, rng_state=(12345, 7))
            for window, softcap, alibi in (((-1, -1), 0.0, None), ((40, 7), 20.0, slopes)):
                run(d, dtype, 203, 190, dict(causal=causal, window_size=window, softcap=softcap, alibi_slopes=alibi,
                                             **drop))
                count += 3
            bias = cupy.asarray(rng.standard_normal((1, 2, 203, 190)).astype(np.float32))
            run(d, dtype, 203, 190, dict(causal=causal, bias=bias, **drop))
            lens_q, lens_k = [203, 0, 1, 70], [190, 9, 0, 131]
            cu_q, cu_k = (cupy.asarray(np.cumsum([0] + lens, dtype=np.int32)) for lens in (lens_q, lens_k))
            q, k, dout = arrays(dtype, (sum(lens_q), 2, d), (sum(lens_k), 1, d), (sum(lens_q), 2, d))
            out, lse = cf.flash_attn_varlen_func(q, k, k, cu_q, cu_k, 203, 190, return_lse=True, causal=causal,
                                                 **drop)
            cf.flash_attn_varlen_backward(dout, q, k, k, out, lse, cu_q, cu_k, 203, 190, causal=causal, **drop)
            count += 5
        if "splits" in wanted:
            # split keys: a few queries against many keys, forced split counts (more than the key tiles: empty
            # splits), with every modifier, a bias and a mask, dropout; then the merge kernel
            q, k = arrays(dtype, (2, 5, 2, d), (2, 1100, 1, d))
            bias = cupy.asarray(rng.standard_normal((1, 2, 5, 1100)).astype(np.float32))
            mask = cupy.asarray(rng.random((2, 1, 1, 1100)) < 0.7)
            for splits, extra in itertools.product((3, 40), ({}, dict(window_size=(300, 7), softcap=20.0,
                                                                       alibi_slopes=slopes),
                                                             dict(bias=bias, mask=mask), dict(dropout_p=0.3))):
                cf.flash_attn_func(q, k, k, causal=causal, num_splits=splits, **extra)
                count += 1
        if "persistent" in wanted and causal and dtype == dtypes[0]:
            # persistent blocks (one an SM) taking several (query tile, head, batch) items each: fewer keys than
            # queries leave items without keys between items with keys in some blocks (their Q barriers and the
            # zero output's staging); then split keys with grouped heads
            for c in (c for c in candidates("fwd", limits, kd, tile_variant) if c.persistent):
                for batch, q_tiles, keys, nheads, nheads_k, splits in ((3, 8, 2.2, 12, 4, 1), (2, 5, 6.3, 16, 2, 2)):
                    q, = arrays(dtype, (batch, q_tiles * c.block_m - 3, nheads, d))
                    k, = arrays(dtype, (batch, int(keys * c.block_n), nheads_k, d))
                    cf.flash_attn_func(q, k, k, causal=True, config=c, num_splits=splits)
                    count += 1
        cupy.cuda.Device().synchronize()
print(f"ran {count} variants", file=sys.stderr)
