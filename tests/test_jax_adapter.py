"""cupyflash.jax: custom_vjp through the kernels. Without a GPU (CPU jax), the jax.jit refusal, which comes while
tracing, before any kernel, and the custom_vjp plumbing with a stand-in attention call; on a GPU with CUDA jax,
gradients against the CuPy backward."""
import math

import pytest

jax = pytest.importorskip("jax", reason="JAX is not installed")
import jax.numpy as jnp  # noqa: E402

import cupyflash.jax as cj  # noqa: E402


def _jax_gpu_reason():
    try:
        return None if jax.devices("gpu") else "JAX sees no GPU"
    except RuntimeError as exc:  # a CPU-only jaxlib
        return f"JAX sees no GPU ({str(exc).splitlines()[0][:100]})"


requires_jax_gpu = pytest.mark.skipif(_jax_gpu_reason() is not None, reason=f"JAX GPU test: {_jax_gpu_reason()}")


def _reference(q, k, v, bias=None):
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s if bias is None else s + bias, axis=-1), v)


def test_jit_is_refused_while_tracing_with_the_reason():
    q = jnp.ones((1, 4, 2, 8), jnp.bfloat16)
    for traced in (jax.jit(lambda q: cj.flash_attn_func(q, q, q)),
                   jax.jit(jax.grad(lambda q: cj.flash_attn_func(q, q, q).astype(jnp.float32).sum())),
                   jax.vmap(lambda q: cj.flash_attn_func(q, q, q))):
        with pytest.raises(cj.TracerError, match="q is a JAX tracer.*jax.jit.*no JAX FFI custom call"):
            traced(q)
    mask = jnp.ones((4, 4), bool)
    with pytest.raises(cj.TracerError, match="mask is a JAX tracer"):
        jax.jit(lambda m: cj.flash_attn_func(q, q, q, mask=m))(mask)


def test_a_cpu_array_gets_the_named_type_error():
    q = jax.device_put(jnp.ones((1, 4, 2, 8), jnp.float16), jax.devices("cpu")[0])  # CPU also where JAX sees a GPU
    with pytest.raises(TypeError, match="^q must be a CUDA array.*device type is 1"):
        cj.flash_attn_func(q, q, q)
    with pytest.raises(TypeError, match="^q must be a CUDA array"):  # under grad the kernel gets concrete arrays
        jax.grad(lambda q: cj.flash_attn_func(q, q, q).astype(jnp.float32).sum())(q)


class StandIn:
    """A DenseCall's interface computed with jnp: tests what the custom_vjp rules add."""

    def __init__(self):
        self.dbias_asked = []

    def forward(self, q, k, v, bias):
        return _reference(q, k, v, bias), None, None

    def backward(self, dout, q, k, v, out, lse, bias, want_dbias):
        self.dbias_asked.append(want_dbias)
        if bias is None:
            return jax.vjp(_reference, q, k, v)[1](dout) + (None,)
        grads = jax.vjp(_reference, q, k, v, bias)[1](dout)
        return grads[:3] + ((grads[3].astype(jnp.float32),) if want_dbias else (None,))


@pytest.mark.parametrize("with_bias,bias_grad", [(False, False), (True, False), (True, True)])
def test_the_custom_vjp_passes_gradients_through(with_bias, bias_grad):
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    q, k, v = (jax.random.normal(key, (2, 5, 3, 8)) for key in keys[:3])
    bias = jax.random.normal(keys[3], (1, 3, 5, 5)).astype(jnp.bfloat16) if with_bias else None
    call = StandIn()
    argnums = (0, 1, 2, 3) if bias_grad else (0, 1, 2)

    def loss(f):
        return lambda q, k, v, b: (f(q, k, v, b).astype(jnp.float32) ** 2).sum()

    got = jax.grad(loss(lambda *a: cj._attention(call, *a)), argnums=argnums)(q, k, v, bias)
    want = jax.grad(loss(_reference), argnums=argnums)(q, k, v, bias)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and jnp.allclose(a.astype(jnp.float32), b.astype(jnp.float32), atol=1e-2)
    assert call.dbias_asked == [bias_grad]


@requires_jax_gpu
@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_gradients_equal_the_cupy_backward_on_a_gpu(dtype, causal):
    import cupyflash as cf

    keys = jax.random.split(jax.random.PRNGKey(1), 5)
    q = jax.random.normal(keys[0], (2, 97, 4, 64)).astype(dtype)
    k, v = (jax.random.normal(key, (2, 130, 2, 64)).astype(dtype) for key in keys[1:3])
    bias = jax.random.normal(keys[3], (1, 4, 97, 130))
    dout = jax.random.normal(keys[4], q.shape).astype(dtype)
    out, vjp = jax.vjp(lambda q, k, v, b: cj.flash_attn_func(q, k, v, causal=causal, bias=b, deterministic=True),
                       q, k, v, bias)
    grads = vjp(dout)
    o, lse = cf.flash_attn_func(q, k, v, causal=causal, bias=bias, return_lse=True)
    want = cf.flash_attn_backward(dout, q, k, v, o, lse, causal=causal, bias=bias, return_dbias=True,
                                  deterministic=True)
    assert isinstance(out, jax.Array) and out.dtype == dtype and bool((out == o).all())
    for a, b in zip(grads, want):
        assert isinstance(a, jax.Array) and a.dtype == b.dtype and bool(jnp.isfinite(a).all())
        assert bool((a == b).all())
