"""Client-batching-friendly layers.

``vmap`` of ``lax.conv`` over per-client kernels becomes a grouped convolution, which XLA's CPU
backend runs far slower than a loop over clients (measured: 10x at C=1000). Written as im2col
followed by one matmul, the same convolution under ``vmap`` becomes a *batched* GEMM, which every
backend runs well. :class:`Conv` keeps the parameter layout of ``flax.linen.Conv`` (kernel
``(kh, kw, cin, cout)``, bias ``(cout,)``) so all lowerings are interchangeable and testable
against each other:

- ``"rows"``: row-Toeplitz GEMM. Only the kh row offsets are stacked (contiguous block copies);
  the kw taps are folded into a banded weight matrix T (built from the kernel with a constant 0/1
  shift tensor), so the convolution is ONE matmul ``(N*Ho, kh*W*Cin) @ (kh*W*Cin, Wo*Cout)`` and
  both gradients are matmuls too. It does W/kw times the multiply-adds of the convolution, but in
  a large well-shaped GEMM; on the 2-core CPU it ran LeNet-5's conv layers 2.8-4x faster than
  im2col under a 100-client vmap (forward + gradients), because building im2col's patches
  (interleaving kh*kw slices along the minor axis) cost 5x the copies themselves.
- ``"im2col"``: shift-and-concatenate patches (kh*kw strided slices) then ``patches @ kernel``.
- ``"patches"``: ``lax.conv_general_dilated_patches`` then a matmul.
- ``"xla"``: ``lax.conv_general_dilated`` (XLA's native convolution).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxfl.core.names import CONV_LOWERINGS as CONV_LOWERINGS  # defined without JAX, for --help
from jaxfl.core.names import LOWERING_CHOICES as LOWERING_CHOICES
from jaxfl.models import tuning
from jaxfl.models.lowerings import conv, conv_native
from jaxfl.models.lowerings import conv_rows as conv_rows
from jaxfl.models.lowerings import im2col as im2col

# "auto" (the default): the lowering measured fastest for each layer's shape (jaxfl.models.tuning)


def default_conv_lowering(backend: str | None = None) -> str:
    """The conv lowering used when none is forced: ``"auto"``, chosen per layer shape."""
    return "auto"


def _tuned(x: jax.Array, kernel: jax.Array, stride: int, padding: str, training: bool) -> str:
    """The measured-fastest lowering for this layer (:func:`jaxfl.models.tuning.choose`)."""
    from jaxfl.core.client_axis import clients_in_flight, current_mesh

    mesh = current_mesh()
    kh, kw, _, cout = kernel.shape
    shape = tuning.ConvShape(
        *x.shape, cout, kh, kw, stride, padding, jnp.dtype(x.dtype).name,
        clients_in_flight(), training, 1 if mesh is None else mesh.size,
    )  # fmt: skip
    return tuning.choose(shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_auto(x: jax.Array, kernel: jax.Array, stride: int, padding: str) -> jax.Array:
    """The convolution by the lowering measured fastest for its shape, chosen at trace time:
    the one fastest forward when it is only evaluated, the one fastest forward + backward when
    it is differentiated (a custom VJP: JAX traces this primal only where nothing
    differentiates it, and ``_conv_auto_fwd`` where something does)."""
    return conv(x, kernel, stride, padding, _tuned(x, kernel, stride, padding, training=False))


def _conv_auto_fwd(x, kernel, stride, padding):
    lowering = _tuned(x, kernel, stride, padding, training=True)
    return jax.vjp(lambda x, k: conv(x, k, stride, padding, lowering), x, kernel)


def _conv_auto_bwd(stride, padding, pullback, g):
    return pullback(g)


conv_auto.defvjp(_conv_auto_fwd, _conv_auto_bwd)


class Conv(nn.Module):
    """2-D convolution (NHWC) with a selectable lowering; parameters as ``flax.linen.Conv``.

    ``lowering="auto"`` takes, when the layer is traced, the lowering measured fastest for its
    exact shape and the number of clients running side by side (:mod:`jaxfl.models.tuning`).
    """

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    stride: int = 1
    padding: str = "SAME"
    use_bias: bool = True
    lowering: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        cin = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (kh, kw, cin, self.features))
        if self.lowering != "auto":
            y = conv(x, kernel, self.stride, self.padding, self.lowering)
        elif self.is_initializing():  # only the parameters' shapes matter: nothing to choose
            y = conv_native(x, kernel, self.stride, self.padding)
        else:
            y = conv_auto(x, kernel, self.stride, self.padding)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        return y


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pool with stride 2 (VALID) on NHWC, as the max of four strided slices.

    Elementwise maxima keep the backward pass a few fused selects; a reshape + reduce-max ran
    3.3x slower under a 100-client vmap on the 2-core CPU (forward + gradient, with the ReLU
    after the pool, which gives the same values since ReLU and max commute).
    """
    h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
    top = jnp.maximum(x[:, 0:h:2, 0:w:2], x[:, 0:h:2, 1:w:2])
    bottom = jnp.maximum(x[:, 1:h:2, 0:w:2], x[:, 1:h:2, 1:w:2])
    return jnp.maximum(top, bottom)
