# What this shows: training a single causal attention layer in pure CuPy (no PyTorch), with cupyflash's
# flash_attn_vjp for the attention's forward and backward and hand-written gradients for everything else.
# The weights and projections are float32; q, k, v go to the kernel in float16; the update is Adam written
# by hand. The task is to copy the previous token, which needs attention to find it by position. On step 0,
# cupyflash's dq, dk, dv are checked against a naive float32 attention gradient.
# Run: python examples/train_attention_cupy.py
import math
import sys

BATCH, SEQLEN, DMODEL, NHEADS = 8, 128, 128, 4
HEADDIM = DMODEL // NHEADS  # 32
NPOS = 64                   # dims of x given to the sinusoidal position code; the rest hold the token
OFFSET = 1                  # target at position i: the whole input vector at position i - OFFSET
STEPS, LR = 300, 1e-2


def make_batch(rng):
    """x = [random token | position code]; y[:, i] = x[:, i - OFFSET]; mask drops positions without a source."""
    import cupy as cp
    tok = cp.asarray(rng.standard_normal((BATCH, SEQLEN, DMODEL - NPOS)), dtype=cp.float32)
    # Sines and cosines: a shift by OFFSET is the same rotation at every position, hence linear in x, which
    # lets a query projection point at the key of the position OFFSET earlier.
    freq = cp.exp(cp.linspace(0.0, math.log(2 * math.pi / (4 * SEQLEN)), NPOS // 2, dtype=cp.float32))
    ang = cp.arange(SEQLEN, dtype=cp.float32)[:, None] * freq[None, :]
    pos = cp.concatenate([cp.sin(ang), cp.cos(ang)], axis=1)
    x = cp.concatenate([tok, cp.broadcast_to(pos, (BATCH, SEQLEN, NPOS))], axis=2)
    y = cp.zeros_like(x)
    y[:, OFFSET:] = x[:, :-OFFSET]
    mask = cp.zeros((BATCH, SEQLEN, 1), dtype=cp.float32)
    mask[:, OFFSET:] = 1.0
    return x, y, mask


def naive_attention_grads(q, k, v, dout, causal):
    """dq, dk, dv of softmax attention in float32 from the float16 inputs: the step-0 reference."""
    import cupy as cp
    q, k, v, do = (t.astype(cp.float32).transpose(0, 2, 1, 3) for t in (q, k, v, dout))  # -> (B, H, S, D)
    sq, sk, scale = q.shape[2], k.shape[2], 1.0 / math.sqrt(q.shape[3])
    s = cp.matmul(q, k.swapaxes(-1, -2)) * scale
    if causal:  # bottom-right aligned: key j visible to query i iff j <= i + sk - sq
        hidden = cp.arange(sk)[None, :] > cp.arange(sq)[:, None] + (sk - sq)
        s = cp.where(hidden, -cp.inf, s)
    p = cp.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    dv = cp.matmul(p.swapaxes(-1, -2), do)
    dp = cp.matmul(do, v.swapaxes(-1, -2))
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))  # softmax backward, row by row
    dq, dk = cp.matmul(ds, k) * scale, cp.matmul(ds.swapaxes(-1, -2), q) * scale
    return tuple(g.transpose(0, 2, 1, 3) for g in (dq, dk, dv))


def loss_and_grads(w, x, y, mask, check=False):
    import cupy as cp
    import cupyflash as cf
    n = BATCH * SEQLEN
    x2 = x.reshape(n, DMODEL)
    q, k, v = ((x2 @ w[name]).reshape(BATCH, SEQLEN, NHEADS, HEADDIM).astype(cp.float16) for name in "qkv")
    out16, vjp = cf.flash_attn_vjp(q, k, v, causal=True)
    a = out16.astype(cp.float32).reshape(n, DMODEL)
    err = (a @ w["o"] - y.reshape(n, DMODEL)) * mask.reshape(n, 1)
    denom = float(mask.sum()) * DMODEL  # MSE over the positions that have a target
    loss = float((err * err).sum()) / denom
    dpred = 2.0 * err / denom
    grads = {"o": a.T @ dpred}
    da = dpred @ w["o"].T
    # Loss scaling: entries of da are ~1e-5 here, where float16 is subnormal and loses digits. Scale da by a
    # power of two (exact in both directions) so its largest entry is in [1, 2), and undo it in float32.
    amax = float(cp.abs(da).max())
    ls = 2.0 ** -math.floor(math.log2(amax)) if amax > 0 else 1.0
    dout = (da * ls).reshape(BATCH, SEQLEN, NHEADS, HEADDIM).astype(cp.float16)
    dq, dk, dv = vjp(dout)
    if check:
        ref = naive_attention_grads(q, k, v, dout, causal=True)
        errs = [float(cp.linalg.norm(g.astype(cp.float32) - r) / cp.linalg.norm(r)) for g, r in zip((dq, dk, dv), ref)]
        print("step 0 gradient check vs naive float32 attention: "
              + ", ".join(f"{nm} rel err {e:.1e}" for nm, e in zip(("dq", "dk", "dv"), errs)))
        assert all(e < 2e-2 for e in errs), f"cupyflash gradients disagree with the reference: {errs}"
    for name, g in zip("qkv", (dq, dk, dv)):  # q = x Wq, so dWq = x^T dq
        grads[name] = x2.T @ (g.astype(cp.float32).reshape(n, DMODEL) / ls)
    return loss, grads


def main():
    try:
        import cupy as cp
        have_gpu = cp.cuda.is_available()
    except Exception:
        have_gpu = False
    if not have_gpu:
        print("No CUDA GPU found: this example trains on the GPU and needs one. Nothing to do.")
        return 0
    rng = cp.random.RandomState(0)
    # Scaled so that q, k, v entries start near unit size whatever DMODEL is.
    w = {name: cp.asarray(rng.standard_normal((DMODEL, DMODEL)) / math.sqrt(DMODEL), dtype=cp.float32)
         for name in "qkvo"}
    m = {name: cp.zeros_like(p) for name, p in w.items()}
    s = {name: cp.zeros_like(p) for name, p in w.items()}
    b1, b2, eps = 0.9, 0.999, 1e-8
    losses = []
    for step in range(STEPS):
        x, y, mask = make_batch(rng)  # a fresh batch each step, so falling loss is learning, not memorising
        loss, grads = loss_and_grads(w, x, y, mask, check=(step == 0))
        losses.append(loss)
        if step % 25 == 0 or step == STEPS - 1:
            print(f"step {step:4d}  loss {loss:.4f}")
        t = step + 1
        for name, g in grads.items():  # Adam, with bias correction
            m[name] = b1 * m[name] + (1 - b1) * g
            s[name] = b2 * s[name] + (1 - b2) * g * g
            w[name] -= LR * (m[name] / (1 - b1 ** t)) / (cp.sqrt(s[name] / (1 - b2 ** t)) + eps)
    first, last = losses[0], losses[-1]
    print(f"first loss {first:.4f}, last loss {last:.4f}, last/first {last / first:.2e}")
    if not last < 0.5 * first:
        print("FAIL: the loss did not fall below half its first value")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
