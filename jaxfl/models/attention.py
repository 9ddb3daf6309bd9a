"""A small decoder-only transformer for the language tasks (``--model transformer-S``).

``apply(params, x)`` maps tokens (B, T) to next-token logits (B, T, V), pure like every zoo
model. The architecture is the pre-LayerNorm decoder of GPT-2 (Radford et al. 2019) at the size
of the small transformers that pfl-research and FL papers put beside the LSTM on next-word
prediction: 3 blocks of width 128, 4 heads of 32, a feed-forward layer of 512 (GELU), learned
position embeddings for the T positions, and causal attention, so position t reads tokens
0..t only; a final LayerNorm and an untied output layer. LayerNorm, not BatchNorm, so there
are no batch statistics to keep per client. With V = 90 and T = 80: 628,442 parameters.

Each block: ``x = x + Attn(LN(x))``, ``x = x + FFN(LN(x))``. Padding needs no attention mask:
the language tasks pad only at the end of a row, which causal attention never lets an earlier
position read, and the losses skip padded targets.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn


class Block(nn.Module):
    width: int
    heads: int
    mlp: int

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        h = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(self.heads, qkv_features=self.width)(
            h, h, mask=mask
        )
        h = nn.LayerNorm()(x)
        return x + nn.Dense(self.width)(nn.gelu(nn.Dense(self.mlp)(h)))


class TransformerLM(nn.Module):
    """Decoder-only transformer language model (module docstring)."""

    vocab_size: int
    max_len: int
    width: int = 128
    layers: int = 3
    heads: int = 4
    mlp: int = 512
    features_only: bool = False  # the final LayerNorm's output (the representation)

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        tokens = tokens.astype(jnp.int32)
        positions = self.param(
            "positions", nn.initializers.normal(0.02), (self.max_len, self.width)
        )
        x = nn.Embed(self.vocab_size, self.width)(tokens) + positions[: tokens.shape[-1]]
        mask = nn.make_causal_mask(tokens)
        for _ in range(self.layers):
            x = Block(self.width, self.heads, self.mlp)(x, mask)
        x = nn.LayerNorm()(x)
        if self.features_only:
            return x
        return nn.Dense(self.vocab_size)(x)
