"""Recurrent encoders: the audio/vision LSTM (X_a, X_v) and the BiGRU that makes M_s.

Both run `flax.linen.RNN` (a `lax.scan` inside) with `seq_lengths`, so one
trace serves every batch and the padded steps after a sequence's end never
reach its result. The reverse GRU direction reverses only the valid part of
each sequence.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.recurrent import flip_sequences

Array = jax.Array


def length_mask(lengths: Array, max_length: int) -> Array:
  """Returns the bool mask [B, max_length], True at positions < length."""
  return jnp.arange(max_length)[None, :] < lengths[:, None]


def masked_mean(x: Array, mask: Array) -> Array:
  """Averages x [B, T, D] over the positions where mask [B, T] is True.

  Returns:
    [B, D]; a row without any valid position gives zeros.
  """
  weights = mask.astype(x.dtype)[..., None]
  total = jnp.sum(x * weights, axis=1)
  count = jnp.maximum(jnp.sum(weights, axis=1), 1)
  return total / count


def clip_lengths(lengths: Array, max_length: int) -> Array:
  """Clips lengths to [1, max_length]: the data layer reports at least 1 step."""
  return jnp.clip(lengths.astype(jnp.int32), 1, max_length)


class LSTMEncoder(nn.Module):
  """Single-direction LSTM over the valid steps (Self-MM's AuViSubNet).

  Gives X_a or X_v: the last valid hidden state, after dropout, mapped by a
  linear layer to `out_size`.

  Attributes:
    hidden_size: LSTM hidden size.
    out_size: size of the representation X_s.
    dropout_rate: dropout on the last hidden state before the linear map.
    dtype: activation dtype (parameters stay float32 except in float64 runs).
  """

  hidden_size: int
  out_size: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, lengths: Array, *,
               train: bool = False) -> tuple[Array, Array]:
    """Encodes frame features.

    Args:
      x: [B, T, D] frames, zero padded after each sequence's length.
      lengths: int [B], valid frames (clipped to [1, T]).
      train: enables dropout.

    Returns:
      (X_s [B, out_size], hidden states [B, T, hidden_size]); the hidden
      states are zero after each sequence's length.
    """
    lengths = clip_lengths(lengths, x.shape[1])
    # The cell's zero carry takes param_dtype: float32, or float64 in float64 runs.
    cell = nn.OptimizedLSTMCell(self.hidden_size, dtype=self.dtype,
                                param_dtype=jnp.promote_types(self.dtype, jnp.float32),
                                name="lstm")
    (_, last_hidden), states = nn.RNN(cell)(
        x.astype(self.dtype), seq_lengths=lengths, return_carry=True)
    states = states * length_mask(lengths, x.shape[1])[..., None].astype(states.dtype)
    h = nn.Dropout(self.dropout_rate)(last_hidden, deterministic=not train)
    vector = nn.Dense(self.out_size, dtype=self.dtype, name="linear")(h)
    return vector, states


def _orthogonal_blocks(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
  """Initialises a [directions, H, 3H] recurrent kernel with one orthogonal [H, H] block per gate."""
  directions, hidden, gates = shape
  blocks = gates // hidden
  keys = jax.random.split(key, directions * blocks)
  orthogonal = nn.initializers.orthogonal()
  # NOTE: a loop, not jax.vmap: with jax 0.10.2 on a 2-core CPU, a dozen
  # batched QR decompositions in one jitted init never finished.
  mats = jnp.stack([orthogonal(k, (hidden, hidden), dtype) for k in keys])
  return mats.reshape(directions, blocks, hidden, hidden).transpose(0, 2, 1, 3).reshape(shape)


class BiGRUCell(nn.RNNCellBase):
  """One step of both GRU directions; the input gates come pre-projected.

  With gates g = W_i x + b_i (split into r, z, n parts) and the same split of
  W_h h + b_h:
    r = sigmoid(g_r + (W_h h)_r), z = sigmoid(g_z + (W_h h)_z)
    n = tanh(g_n + r * (W_h h + b_h)_n),  h' = (1 - z) * n + z * h
  (the PyTorch and Flax GRUCell form). Axis 1 of the carry and the gates is
  the direction (0 forward, 1 backward).

  Attributes:
    hidden_size: H.
    dtype: activation dtype.
    param_dtype: parameter dtype.
  """

  hidden_size: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry: Array, gates: Array) -> tuple[Array, Array]:
    """Maps (h [B, 2, H], gates [B, 2, 3H]) to (h', h')."""
    h = carry
    kernel = self.param("recurrent_kernel", _orthogonal_blocks,
                        (2, self.hidden_size, 3 * self.hidden_size), self.param_dtype)
    bias = self.param("recurrent_bias", nn.initializers.zeros_init(),
                      (2, 3 * self.hidden_size), self.param_dtype)
    recurrent = jnp.einsum("bdh,dhk->bdk", h, kernel.astype(self.dtype)) + bias.astype(self.dtype)
    g_r, g_z, g_n = jnp.split(gates, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(recurrent, 3, axis=-1)
    r = nn.sigmoid(g_r + h_r)
    z = nn.sigmoid(g_z + h_z)
    n = jnp.tanh(g_n + r * h_n)
    new_h = (1.0 - z) * n + z * h
    return new_h, new_h

  def initialize_carry(self, rng: Array, input_shape: tuple[int, ...]) -> Array:
    """Returns zeros [*batch, 2, H] for gates of shape [*batch, 2, 3H]."""
    del rng
    return jnp.zeros(tuple(input_shape[:-1]) + (self.hidden_size,), self.dtype)

  @property
  def num_feature_axes(self) -> int:
    return 2


class BiGRU(nn.Module):
  """One-layer bidirectional GRU over the valid steps, both directions in one scan.

  The input projection of all steps is one matrix product before the scan;
  the backward direction runs over each sequence's valid part reversed.

  Attributes:
    hidden_size: hidden size of each direction.
    merge: "concat" gives [B, T, 2 * hidden_size]; "mean" averages the two
      directions into [B, T, hidden_size].
    dtype: activation dtype.
  """

  hidden_size: int
  merge: str = "concat"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, lengths: Array) -> Array:
    """Runs both directions over x [B, T, D]; padded steps come back as zeros."""
    if self.merge not in ("concat", "mean"):
      raise ValueError(f"BiGRU.merge must be 'concat' or 'mean', got {self.merge!r}.")
    steps = x.shape[1]
    gates = nn.DenseGeneral((2, 3 * self.hidden_size), dtype=self.dtype,
                            name="input")(x.astype(self.dtype))  # [B, T, 2, 3H]
    flip = lambda y: flip_sequences(y, lengths, num_batch_dims=1, time_major=False)
    gates = jnp.stack([gates[:, :, 0], flip(gates[:, :, 1])], axis=2)
    # Steps after a sequence's length run on padding, but the forward outputs
    # there are masked and the backward ones come after its valid part.
    h = nn.RNN(BiGRUCell(self.hidden_size, dtype=self.dtype, name="cell"))(gates)
    forward, backward = h[:, :, 0], flip(h[:, :, 1])
    if self.merge == "concat":
      out = jnp.concatenate([forward, backward], axis=-1)
    else:
      out = (forward + backward) / 2
    return out * length_mask(lengths, steps)[..., None].astype(out.dtype)


class SequenceEncoder(nn.Module):
  """M_s: a one-layer BiGRU and a linear map to the common size d.

  Attributes:
    dim: the common size d of the cross-modal task.
    dtype: activation dtype.
  """

  dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, lengths: Array) -> Array:
    """Maps x [B, T, D] with lengths [B] to M_s [B, T, d], zero after each length."""
    h = BiGRU(self.dim, merge="concat", dtype=self.dtype, name="bigru")(x, lengths)
    m = nn.Dense(self.dim, dtype=self.dtype, name="projection")(h)
    return m * length_mask(lengths, x.shape[1])[..., None].astype(m.dtype)
