"""Gated transformer layers of the cross-modal task (after BBFN) and the modality discriminator.

For a modality pair (s, m), layer i updates both sequences, one stream per
direction:

  x_s = summary_i(M_s^{i-1}),  x_m = summary_i(M_m^{i-1})      [B, d]
  g_f = sigmoid(W_f [x_s || x_m]),  g_c = sigmoid(W_c [x_m || x_s])
  o   = MHA(query = M_s^{i-1}, key = value = M_m^{i-1})
  M̄_s = LN(g_f * M_s^{i-1} + g_c * o)
  M_s^i = LN(M̄_s + FFN(M̄_s))

and the same with s and m swapped, with separate weights. The summary is the
masked mean over valid positions of a BiGRU whose two directions are
averaged. One summary module per layer serves both modalities, so x_s and
x_m live in one space, which the modality discriminator classifies. With
`first_layer_summary="linear"`, layer 0 uses a linear map of the masked mean
instead (as BBFN does).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mcer_jax.models import sequence

Array = jax.Array

SUMMARY_KINDS = ("bigru", "linear")


class Summary(nn.Module):
  """Sequence summary x_s: masked mean of a direction-averaged BiGRU, or of a linear map.

  Attributes:
    dim: d.
    kind: "bigru" or "linear".
    dtype: activation dtype.
  """

  dim: int
  kind: str = "bigru"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, lengths: Array) -> Array:
    """Maps x [B, T, d] with lengths [B] to the summary [B, d]."""
    mask = sequence.length_mask(lengths, x.shape[1])
    if self.kind == "bigru":
      h = sequence.BiGRU(self.dim, merge="mean", dtype=self.dtype, name="bigru")(x, lengths)
      return sequence.masked_mean(h, mask)
    if self.kind == "linear":
      return nn.Dense(self.dim, dtype=self.dtype, name="linear")(sequence.masked_mean(x, mask))
    raise ValueError(
        f"config.model.cross.first_layer_summary must be one of {SUMMARY_KINDS}, "
        f"got {self.kind!r}.")


class GatedStream(nn.Module):
  """One direction of a gated layer: M_s attends to M_m under the gates.

  Attributes:
    dim: d.
    num_heads: attention heads.
    ffn_dim: hidden size of the position-wise FFN.
    dropout_rate: dropout on attention weights, the attention output and the FFN output.
    dtype: activation dtype.
  """

  dim: int
  num_heads: int
  ffn_dim: int
  dropout_rate: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, m_s: Array, m_m: Array, mask_m: Array, x_s: Array,
               x_m: Array, train: bool = False) -> Array:
    """Computes M_s^i.

    Args:
      m_s: M_s^{i-1} [B, T, d], the query sequence.
      m_m: M_m^{i-1} [B, T, d], the key and value sequence.
      mask_m: bool [B, T], True on the valid positions of m_m.
      x_s: summary of m_s [B, d].
      x_m: summary of m_m [B, d].
      train: enables dropout.

    Returns:
      M_s^i [B, T, d].
    """
    deterministic = not train
    g_f = nn.sigmoid(nn.Dense(self.dim, dtype=self.dtype, name="filter_gate")(
        jnp.concatenate([x_s, x_m], axis=-1)))
    g_c = nn.sigmoid(nn.Dense(self.dim, dtype=self.dtype, name="complement_gate")(
        jnp.concatenate([x_m, x_s], axis=-1)))
    # Padded keys of M_m get no attention; padded query rows of M_s attend to
    # the valid keys of M_m and are discarded downstream.
    attention_mask = nn.make_attention_mask(jnp.ones(m_s.shape[:2], bool), mask_m)
    o = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads,
        qkv_features=self.dim,
        out_features=self.dim,
        dropout_rate=self.dropout_rate,
        broadcast_dropout=False,
        dtype=self.dtype,
        force_fp32_for_softmax=jnp.dtype(self.dtype).itemsize < 4,
        name="attention")(m_s, m_m, mask=attention_mask, deterministic=deterministic)
    o = nn.Dropout(self.dropout_rate)(o, deterministic=deterministic)
    m_bar = nn.LayerNorm(dtype=self.dtype, name="gate_layer_norm")(
        g_f[:, None, :] * m_s + g_c[:, None, :] * o)
    h = nn.relu(nn.Dense(self.ffn_dim, dtype=self.dtype, name="ffn_hidden")(m_bar))
    h = nn.Dense(self.dim, dtype=self.dtype, name="ffn_output")(h)
    h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    return nn.LayerNorm(dtype=self.dtype, name="ffn_layer_norm")(m_bar + h)


# Two GatedStreams with separate weights (leading parameter axis 2) run as one.
TwoStreams = nn.vmap(
    GatedStream, in_axes=(0, 0, 0, 0, 0, None), out_axes=0,
    variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True})


class GatedTransformerLayer(nn.Module):
  """Gated layer i of a pair: both directions, sharing one summary module.

  Attributes:
    dim, num_heads, ffn_dim, dropout_rate: as in GatedStream.
    summary: "bigru" or "linear" (see Summary).
    dtype: activation dtype.
  """

  dim: int
  num_heads: int
  ffn_dim: int
  dropout_rate: float = 0.1
  summary: str = "bigru"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, m_s: Array, m_m: Array, lengths_s: Array,
               lengths_m: Array, train: bool = False) -> tuple[Array, Array, Array, Array]:
    """Updates both sequences of the pair.

    Args:
      m_s: M_s^{i-1} [B, T, d], zero after lengths_s.
      m_m: M_m^{i-1} [B, T, d], zero after lengths_m.
      lengths_s: int [B] valid positions of m_s, at least 1.
      lengths_m: int [B] valid positions of m_m, at least 1.
      train: enables dropout.

    Returns:
      (M_s^i [B, T, d], M_m^i [B, T, d], x_s [B, d], x_m [B, d]); the new
      sequences are zero after their lengths.
    """
    batch, length = m_s.shape[:2]
    summarise = Summary(self.dim, self.summary, dtype=self.dtype, name="summary")
    # One call on both sequences stacked along the batch axis runs one scan.
    summaries = summarise(jnp.concatenate([m_s, m_m], axis=0),
                          jnp.concatenate([lengths_s, lengths_m], axis=0))
    x_s, x_m = summaries[:batch], summaries[batch:]
    mask_s = sequence.length_mask(lengths_s, length)
    mask_m = sequence.length_mask(lengths_m, length)
    # Both directions in one vmapped call: stream 0 is s attending to m,
    # stream 1 is m attending to s.
    new = TwoStreams(self.dim, self.num_heads, self.ffn_dim, self.dropout_rate,
                     self.dtype, name="streams")(
                         jnp.stack([m_s, m_m]), jnp.stack([m_m, m_s]),
                         jnp.stack([mask_m, mask_s]), jnp.stack([x_s, x_m]),
                         jnp.stack([x_m, x_s]), train)
    new = new * jnp.stack([mask_s, mask_m])[..., None].astype(new.dtype)
    return new[0], new[1], x_s, x_m


class GatedTransformer(nn.Module):
  """L stacked gated layers for one modality pair (s, m).

  Attributes:
    num_layers: L.
    first_layer_summary: "bigru" or "linear" for layer 0; later layers use "bigru".
    dim, num_heads, ffn_dim, dropout_rate, dtype: as in GatedTransformerLayer.
  """

  dim: int
  num_layers: int
  num_heads: int
  ffn_dim: int
  dropout_rate: float = 0.1
  first_layer_summary: str = "bigru"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, m_s: Array, m_m: Array, lengths_s: Array,
               lengths_m: Array, train: bool = False) -> tuple[Array, Array]:
    """Runs the pair's layers.

    Args:
      m_s, m_m: M_s^0, M_m^0 [B, T, d], zero after their lengths.
      lengths_s, lengths_m: int [B], at least 1.
      train: enables dropout.

    Returns:
      (H_sm [B, 2d]: the first-position vectors of the last layer's two
      sequences concatenated, summaries [L, 2, B, d]: x_s and x_m of every
      layer, for the modality discriminator).
    """
    if self.num_layers < 1:
      raise ValueError(f"config.model.cross.num_layers must be at least 1, got {self.num_layers}.")
    summaries = []
    for i in range(self.num_layers):
      kind = self.first_layer_summary if i == 0 else "bigru"
      m_s, m_m, x_s, x_m = GatedTransformerLayer(
          self.dim, self.num_heads, self.ffn_dim, self.dropout_rate, kind,
          self.dtype, name=f"layer_{i}")(m_s, m_m, lengths_s, lengths_m, train)
      summaries.append(jnp.stack([x_s, x_m]))
    head = jnp.concatenate([m_s[:, 0], m_m[:, 0]], axis=-1)
    return head, jnp.stack(summaries)


class ModalityDiscriminator(nn.Module):
  """MLP d -> 4d -> 1 giving the logit that a summary comes from the pair's second modality.

  Attributes:
    dim: d.
    dtype: activation dtype.
  """

  dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, summaries: Array) -> Array:
    """Maps summaries [..., d] to logits [...] (sigmoid gives the probability)."""
    h = nn.relu(nn.Dense(4 * self.dim, dtype=self.dtype, name="hidden")(summaries))
    return nn.Dense(1, dtype=self.dtype, name="output")(h)[..., 0]


class PairDiscriminator(nn.Module):
  """One ModalityDiscriminator per gated layer of a pair.

  Attributes:
    dim: d.
    num_layers: L.
    dtype: activation dtype.
  """

  dim: int
  num_layers: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, summaries: Array) -> tuple[Array, Array]:
    """Classifies the summaries [L, 2, B, d] of a pair.

    Returns:
      (logits [L, 2, B], targets [L, 2, B]): target 0 for x_s (the first
      modality of the pair), 1 for x_m.
    """
    logits = jnp.stack([
        ModalityDiscriminator(self.dim, self.dtype, name=f"layer_{i}")(summaries[i])
        for i in range(self.num_layers)
    ])
    targets = jnp.broadcast_to(
        jnp.arange(2, dtype=jnp.float32)[None, :, None], logits.shape)
    return logits, targets


# The P active modality pairs as one module: each parameter gets a leading
# axis of size P, and all pairs run in one set of operations.
PairStack = nn.vmap(
    GatedTransformer, in_axes=(0, 0, 0, 0, None), out_axes=0,
    variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True})

# One PairDiscriminator per pair, stacked like PairStack: [P, L, 2, B] out.
DiscriminatorStack = nn.vmap(
    PairDiscriminator, in_axes=0, out_axes=0,
    variable_axes={"params": 0}, split_rngs={"params": True})
