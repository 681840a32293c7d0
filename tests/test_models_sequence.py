"""Tests of the LSTM (X_a, X_v) and BiGRU (M_s) encoders against numpy recurrences."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from mcer_jax.models import sequence


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _numpy_lstm(p, x, length):
  """Flax's OptimizedLSTMCell equations, one sequence, the first `length` steps."""
  hidden = p["hi"]["kernel"].shape[0]
  h = np.zeros(hidden)
  c = np.zeros(hidden)
  states = []
  for t in range(length):
    gate = lambda g: x[t] @ p[f"i{g}"]["kernel"] + h @ p[f"h{g}"]["kernel"] + p[f"h{g}"]["bias"]
    i, f, g, o = _sigmoid(gate("i")), _sigmoid(gate("f")), np.tanh(gate("g")), _sigmoid(gate("o"))
    c = f * c + i * g
    h = o * np.tanh(c)
    states.append(h)
  return np.stack(states)


def _numpy_gru(w_in, b_in, w_h, b_h, x):
  """A GRU (PyTorch's equations) over x [T, D]: gates ordered r, z, n."""
  hidden = w_h.shape[0]
  h = np.zeros(hidden)
  out = []
  for t in range(x.shape[0]):
    gi = x[t] @ w_in + b_in
    gh = h @ w_h + b_h
    r = _sigmoid(gi[:hidden] + gh[:hidden])
    z = _sigmoid(gi[hidden:2 * hidden] + gh[hidden:2 * hidden])
    n = np.tanh(gi[2 * hidden:] + r * gh[2 * hidden:])
    h = (1 - z) * n + z * h
    out.append(h)
  return np.stack(out)


def _numpy_bigru(p, x, length):
  """Both directions over the valid part; the backward one reads it reversed."""
  w_in, b_in = p["input"]["kernel"], p["input"]["bias"]  # [D, 2, 3H], [2, 3H]
  w_h, b_h = p["cell"]["recurrent_kernel"], p["cell"]["recurrent_bias"]
  valid = x[:length]
  forward = _numpy_gru(w_in[:, 0], b_in[0], w_h[0], b_h[0], valid)
  backward = _numpy_gru(w_in[:, 1], b_in[1], w_h[1], b_h[1], valid[::-1])[::-1]
  return forward, backward


def _inputs(seed, batch, steps, dim):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(batch, steps, dim)).astype(np.float32)
  lengths = np.array([steps, 1, steps // 2, 3][:batch], np.int32)
  return x, lengths


def test_lstm_matches_numpy_recurrence():
  x, lengths = _inputs(0, 4, 9, 5)
  module = sequence.LSTMEncoder(hidden_size=6, out_size=3)
  params = module.init(jax.random.PRNGKey(0), x, lengths)["params"]
  vector, states = module.apply({"params": params}, x, lengths)
  chex.assert_shape(vector, (4, 3))
  chex.assert_shape(states, (4, 9, 6))
  cell = jax.tree.map(np.asarray, params["lstm"])
  linear = params["linear"]
  for row, length in enumerate(lengths):
    expected = _numpy_lstm(cell, x[row].astype(np.float64), length)
    np.testing.assert_allclose(states[row, :length], expected, atol=1e-5)
    np.testing.assert_array_equal(states[row, length:], 0.0)
    # X_s = linear map of the last valid hidden state.
    np.testing.assert_allclose(
        vector[row], expected[-1] @ linear["kernel"] + linear["bias"], atol=1e-5)


def test_lstm_ignores_padding_values_and_length():
  x, lengths = _inputs(1, 4, 9, 5)
  module = sequence.LSTMEncoder(hidden_size=6, out_size=3)
  params = module.init(jax.random.PRNGKey(0), x, lengths)["params"]
  vector, states = module.apply({"params": params}, x, lengths)
  row, length = 3, int(lengths[3])
  alone_vector, alone_states = module.apply({"params": params}, x[row:row + 1, :length], lengths[row:row + 1])
  np.testing.assert_allclose(vector[row], alone_vector[0], atol=1e-6)
  np.testing.assert_allclose(states[row, :length], alone_states[0], atol=1e-6)
  garbage = x.copy()
  garbage[row, length:] = 1e3
  vector_g, _ = module.apply({"params": params}, garbage, lengths)
  np.testing.assert_allclose(vector_g[row], vector[row], atol=1e-6)


def test_lstm_dropout_only_in_training():
  x, lengths = _inputs(2, 4, 6, 5)
  module = sequence.LSTMEncoder(hidden_size=8, out_size=4, dropout_rate=0.5)
  params = module.init(jax.random.PRNGKey(0), x, lengths)["params"]
  first, _ = module.apply({"params": params}, x, lengths)
  second, _ = module.apply({"params": params}, x, lengths)
  np.testing.assert_array_equal(first, second)
  dropped, _ = module.apply({"params": params}, x, lengths, train=True,
                            rngs={"dropout": jax.random.PRNGKey(3)})
  assert not np.allclose(dropped, first)


def test_bigru_matches_numpy_both_directions():
  x, lengths = _inputs(3, 4, 8, 5)
  module = sequence.BiGRU(hidden_size=6, merge="concat")
  params = module.init(jax.random.PRNGKey(0), x, lengths)["params"]
  out = module.apply({"params": params}, x, lengths)
  chex.assert_shape(out, (4, 8, 12))
  numpy_params = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  for row, length in enumerate(lengths):
    forward, backward = _numpy_bigru(numpy_params, x[row].astype(np.float64), length)
    np.testing.assert_allclose(out[row, :length, :6], forward, atol=1e-5)
    np.testing.assert_allclose(out[row, :length, 6:], backward, atol=1e-5)
    np.testing.assert_array_equal(out[row, length:], 0.0)
  mean = sequence.BiGRU(hidden_size=6, merge="mean").apply({"params": params}, x, lengths)
  np.testing.assert_allclose(mean, (out[..., :6] + out[..., 6:]) / 2, atol=1e-6)


def test_bigru_recurrent_blocks_orthogonal():
  module = sequence.BiGRU(hidden_size=5)
  x, lengths = _inputs(4, 2, 3, 4)
  kernel = module.init(jax.random.PRNGKey(0), x, lengths[:2])["params"]["cell"]["recurrent_kernel"]
  chex.assert_shape(kernel, (2, 5, 15))
  for direction in range(2):
    for gate in range(3):
      block = np.asarray(kernel[direction, :, gate * 5:(gate + 1) * 5])
      np.testing.assert_allclose(block @ block.T, np.eye(5), atol=1e-5)


def test_sequence_encoder_padding_invariant():
  x, lengths = _inputs(5, 4, 10, 7)
  module = sequence.SequenceEncoder(dim=4)
  params = module.init(jax.random.PRNGKey(0), x, lengths)["params"]
  out = module.apply({"params": params}, x, lengths)
  chex.assert_shape(out, (4, 10, 4))
  chex.assert_tree_all_finite(out)
  for row in (1, 2, 3):
    length = int(lengths[row])
    # The same sequence alone, cut to its valid part, and with junk padding.
    alone = module.apply({"params": params}, x[row:row + 1, :length], lengths[row:row + 1])
    np.testing.assert_allclose(out[row, :length], alone[0], atol=1e-5)
    junk = np.concatenate([x[row:row + 1, :length], np.full((1, 6, 7), 50.0, np.float32)], axis=1)
    padded = module.apply({"params": params}, junk, lengths[row:row + 1])
    np.testing.assert_allclose(padded[0, :length], alone[0], atol=1e-5)
    np.testing.assert_array_equal(padded[0, length:], 0.0)


def test_masked_mean_and_length_helpers():
  x = jnp.arange(24, dtype=jnp.float32).reshape(2, 4, 3)
  lengths = jnp.array([2, 4])
  mask = sequence.length_mask(lengths, 4)
  np.testing.assert_array_equal(mask, [[1, 1, 0, 0], [1, 1, 1, 1]])
  mean = sequence.masked_mean(x, mask)
  np.testing.assert_allclose(mean[0], np.asarray(x[0, :2]).mean(0))
  np.testing.assert_allclose(mean[1], np.asarray(x[1]).mean(0))
  np.testing.assert_array_equal(sequence.clip_lengths(jnp.array([0, 3, 9]), 5), [1, 3, 5])
