"""The convolution lowerings :class:`jaxfl.models.layers.Conv` chooses between.

Every lowering computes the same convolution with the parameter layout of ``flax.linen.Conv``
(kernel ``(kh, kw, cin, cout)``); why there are several, and what each is, is in
:mod:`jaxfl.models.layers`. :func:`conv` dispatches by name; :func:`recording` notes every call
traced inside it (how :mod:`jaxfl.models.model_tuning` finds a model's conv layers).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxfl.core.names import LOWERING_CHOICES


def _same_padding(size: int, k: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: jax.Array, kh: int, kw: int, stride: int) -> jax.Array:
    """Zero-pad NHWC ``x`` so a VALID convolution gives SAME's output size."""
    pads = (_same_padding(x.shape[1], kh, stride), _same_padding(x.shape[2], kw, stride))
    return jnp.pad(x, ((0, 0), *pads, (0, 0)))


def im2col(x: jax.Array, kernel_size: Sequence[int], stride: int, padding: str) -> jax.Array:
    """(N, H, W, C) -> (N, Ho, Wo, kh*kw*C) patches, ordered (kh, kw, C) like a flax kernel."""
    kh, kw = kernel_size
    if padding == "SAME":
        x = _pad_same(x, kh, kw, stride)
    h, w = x.shape[1], x.shape[2]
    ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1
    cols = [
        x[:, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride, :]
        for i in range(kh)
        for j in range(kw)
    ]
    return jnp.concatenate(cols, axis=-1)


def _shift_tensor(w_in: int, w_out: int, kw: int, stride: int) -> np.ndarray:
    """S[p, q, j] = 1 where input column p feeds output column q through kernel tap j."""
    s = np.zeros((w_in, w_out, kw), np.float32)
    for q in range(w_out):
        s[q * stride + np.arange(kw), q, np.arange(kw)] = 1.0
    return s


def _window_pads(size: int, k: int, stride: int, padding: str) -> tuple[int, int]:
    return _same_padding(size, k, stride) if padding == "SAME" else (0, 0)


_NHWC = ("NHWC", "HWIO", "NHWC")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_native(x: jax.Array, kernel: jax.Array, stride: int, padding: str) -> jax.Array:
    """XLA's convolution (N, H, W, Cin) x (kh, kw, Cin, Cout) -> (N, Ho, Wo, Cout), with a
    backward pass written as two convolutions in the canonical NHWC/HWIO form.

    Why: JAX's own transpose rules give the kernel gradient as a convolution with batch and
    feature dimensions swapped (``f01b_i01o->01bf``) and the input gradient with a swapped kernel
    (``01oi``). In a separately jitted step XLA's CPU compiler canonicalises both into fast library
    convolutions, but inside a loop body (the ``lax.scan`` of local SGD, the ``lax.map`` over
    clients) it does not, and they fall back to a naive loop nest: the FedAvg CNN's step ran 4.4x
    slower in a scan than as a jitted step on the 2-core CPU. Here the transposes are explicit
    and an ``optimization_barrier`` keeps XLA from folding them back into the convolution's
    dimension numbers, so every convolution reaches the fast path wherever it is traced.

    With x padded to xp (SAME's pads), y[n,o,p] = sum_{i,j} xp[n, o*s+i, p*s+j] k[i,j]:

    - dx = conv(g dilated by s, flip(k) with in/out swapped), padded by kh-1 minus the forward
      pads: a "full" correlation, cropped to x's extent;
    - dk[i,j,ci,co] = sum_{n,o,p} xp[n, o*s+i, p*s+j, ci] g[n,o,p,co]: a convolution of x with
      Cin as the batch and N as the feature axis, by g dilated by s, cropped to (kh, kw).
    """
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), padding, dimension_numbers=_NHWC
    )


def _conv_native_fwd(x, kernel, stride, padding):
    return conv_native(x, kernel, stride, padding), (x, kernel)


def _conv_native_bwd(stride, padding, residuals, g):
    x, kernel = residuals
    kh, kw = kernel.shape[:2]
    (top, bottom), (left, right) = (
        _window_pads(x.shape[1], kh, stride, padding),
        _window_pads(x.shape[2], kw, stride, padding),
    )
    # rows/columns of the padded input that no output window reaches (VALID with a remainder)
    unused_h = x.shape[1] + top + bottom - ((g.shape[1] - 1) * stride + kh)
    unused_w = x.shape[2] + left + right - ((g.shape[2] - 1) * stride + kw)
    flipped = jax.lax.optimization_barrier(jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))
    dx = jax.lax.conv_general_dilated(
        g,
        flipped,
        (1, 1),
        ((kh - 1 - top, kh - 1 - bottom + unused_h), (kw - 1 - left, kw - 1 - right + unused_w)),
        lhs_dilation=(stride, stride),
        dimension_numbers=_NHWC,
    )
    x_t, g_t = jax.lax.optimization_barrier((x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3)))
    dk = jax.lax.conv_general_dilated(
        x_t,
        g_t,
        (1, 1),
        ((top, bottom), (left, right)),
        rhs_dilation=(stride, stride),
        dimension_numbers=_NHWC,
    )  # (Cin, >= kh, >= kw, Cout)
    return dx, dk[:, :kh, :kw].transpose(1, 2, 0, 3)


conv_native.defvjp(_conv_native_fwd, _conv_native_bwd)


def conv_rows(x: jax.Array, kernel: jax.Array, stride: int, padding: str) -> jax.Array:
    """Convolution as one row-Toeplitz GEMM: (N, H, W, Cin) -> (N, Ho, Wo, Cout)."""
    kh, kw, cin, cout = kernel.shape
    if padding == "SAME":
        x = _pad_same(x, kh, kw, stride)
    n, h, w, _ = x.shape
    ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1
    rows = jnp.stack([x[:, i : i + stride * (ho - 1) + 1 : stride] for i in range(kh)], axis=2)
    toeplitz = jnp.einsum("pqj,ijco->ipcqo", _shift_tensor(w, wo, kw, stride), kernel)
    out = rows.reshape(n * ho, kh * w * cin) @ toeplitz.reshape(kh * w * cin, wo * cout)
    return out.reshape(n, ho, wo, cout)


_recorder: contextvars.ContextVar = contextvars.ContextVar("conv_recorder", default=None)


@contextlib.contextmanager
def recording(calls: list):
    """Append ``(input (H, W, Cin), kernel (kh, kw, Cin, Cout), stride, padding)`` of every
    :func:`conv` traced inside to ``calls`` (a model's conv layers, in order)."""
    token = _recorder.set(calls)
    try:
        yield calls
    finally:
        _recorder.reset(token)


def conv(x: jax.Array, kernel: jax.Array, stride: int, padding: str, lowering: str):
    """(N, H, W, Cin) x (kh, kw, Cin, Cout) -> (N, Ho, Wo, Cout) by ``lowering`` (one of
    :data:`CONV_LOWERINGS`); every lowering computes the same convolution."""
    calls = _recorder.get()
    if calls is not None:
        calls.append((tuple(x.shape[1:]), tuple(kernel.shape), stride, padding))
    kh, kw, cin, cout = kernel.shape
    if lowering == "xla":
        return conv_native(x, kernel, stride, padding)
    if lowering == "rows":
        return conv_rows(x, kernel, stride, padding)
    if lowering == "im2col":
        return im2col(x, (kh, kw), stride, padding) @ kernel.reshape(kh * kw * cin, cout)
    if lowering == "patches":
        patches = jax.lax.conv_general_dilated_patches(
            x, (kh, kw), (stride, stride), padding, dimension_numbers=_NHWC
        )  # feature order (C, kh, kw)
        return patches @ kernel.transpose(2, 0, 1, 3).reshape(cin * kh * kw, cout)
    raise ValueError(f"unknown conv lowering {lowering!r}; allowed: {', '.join(LOWERING_CHOICES)}")
