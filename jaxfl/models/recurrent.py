"""Recurrent language models: the character LSTM of the Shakespeare task.

``apply(params, x)`` maps tokens (B, T) to next-token logits (B, T, V), pure like every zoo
model, so a client axis of ``params`` vmaps over it.

The LSTM layer (Hochreiter and Schmidhuber 1997, with a forget gate, Gers et al. 2000):

    [i, f, g, o]_t = x_t W + h_{t-1} U + b
    c_t = sigmoid(f_t) * c_{t-1} + sigmoid(i_t) * tanh(g_t)
    h_t = sigmoid(o_t) * tanh(c_t)

computed as one matmul of every time step's input at once, (B T, D) x (D, 4H), then a
``lax.scan`` over T of the recurrent (B, H) x (H, 4H) matmul and the gates: the input half of
the work leaves the sequential loop (the cuDNN formulation). The forget gate's bias starts at 1
(Jozefowicz et al. 2015; Keras' ``unit_forget_bias``, which TFF's Shakespeare model uses), the
recurrent kernel orthogonal, the input kernel Glorot-uniform (Keras' defaults).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn


class LSTM(nn.Module):
    """One LSTM layer over a whole sequence: (B, T, D) -> hidden states (B, T, H), from zero
    initial state."""

    hidden: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.hidden
        w = self.param("kernel", nn.initializers.glorot_uniform(), (x.shape[-1], 4 * h))
        u = self.param("recurrent_kernel", nn.initializers.orthogonal(), (h, 4 * h))
        b = self.param("bias", lambda _, shape: jnp.zeros(shape).at[h : 2 * h].set(1.0), (4 * h,))
        w, u, b = (p.astype(x.dtype) for p in (w, u, b))
        projected = x @ w + b  # (B, T, 4H): every step's input term in one matmul

        def step(carry, z_t):
            c, h_prev = carry
            z = z_t + h_prev @ u
            i, f, g, o = jnp.split(z, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h_t = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (c, h_t), h_t

        zeros = jnp.zeros((x.shape[0], h), x.dtype)
        _, states = jax.lax.scan(step, (zeros, zeros), jnp.swapaxes(projected, 0, 1))
        return jnp.swapaxes(states, 0, 1)


def charlstm_train_flops(
    tokens: int,
    vocab: int,
    hidden: int,
    embed: int = 8,
    layers: int = 2,
    projection: int | None = None,
):
    """FLOPs to train an LSTM language model (:class:`CharLSTM`, :class:`NWPLSTM` with its
    ``projection``) on ``tokens`` tokens, forward and backward: per token and layer
    2 * 4H * (D_in + H) for the two matmuls, 2 * H * P + 2 * P * V for a projection P and the
    output layer (2 * H * V without one), the backward pass twice the forward (the gates'
    elementwise work left out). Counted by hand because XLA's cost analysis counts a
    ``lax.scan`` body once, not once per step."""
    out = hidden if projection is None else projection
    forward = 2 * out * vocab + (0 if projection is None else 2 * hidden * projection)
    d_in = embed
    for _ in range(layers):
        forward += 2 * 4 * hidden * (d_in + hidden)
        d_in = hidden
    return 3 * forward * tokens


class NWPLSTM(nn.Module):
    """The StackOverflow next-word model of TFF's and Reddi et al.'s baseline
    (``create_recurrent_model``): a 96-dimensional word embedding, one LSTM layer of 670 units,
    a dense projection to 96, a dense layer to the ``vocab_size`` (10,004) logits at every
    position; output untied from the embedding, as published. 4,050,748 parameters at 10,004
    tokens."""

    vocab_size: int
    hidden: int = 670
    embed: int = 96
    features_only: bool = False

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = nn.Embed(self.vocab_size, self.embed)(tokens.astype(jnp.int32))
        x = nn.Dense(self.embed)(LSTM(self.hidden)(x))
        if self.features_only:
            return x
        return nn.Dense(self.vocab_size)(x)


class CharLSTM(nn.Module):
    """McMahan et al.'s Shakespeare model (AISTATS 2017; TFF's and FedJAX's baseline): an
    8-dimensional character embedding, two LSTM layers of ``hidden`` (256) units, a dense layer
    to the ``vocab_size`` (90) logits at every position. 819,290 parameters at 256 units and 90
    tokens. Token inputs arrive as any dtype (the model casts them to int32), so shape-only
    callers may pass zeros of float32."""

    vocab_size: int
    hidden: int = 256
    embed: int = 8
    layers: int = 2
    features_only: bool = False  # return the last LSTM layer's states (the representation)

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = nn.Embed(self.vocab_size, self.embed)(tokens.astype(jnp.int32))
        for _ in range(self.layers):
            x = LSTM(self.hidden)(x)
        if self.features_only:
            return x
        return nn.Dense(self.vocab_size)(x)
