"""Tests of the gated transformer layers and the modality discriminator."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcer_jax.models import gated_transformer as gt
from mcer_jax.models import sequence

D, HEADS, FFN = 8, 2, 12


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _layer_norm(x, p, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _numpy_stream(p, m_s, m_m, length_m, x_s, x_m):
  """One gated stream for one sample, from the gate and attention equations."""
  dense = lambda x, q: x @ q["kernel"] + q["bias"]
  g_f = _sigmoid(dense(np.concatenate([x_s, x_m]), p["filter_gate"]))
  g_c = _sigmoid(dense(np.concatenate([x_m, x_s]), p["complement_gate"]))
  a = p["attention"]
  q = np.einsum("td,dhk->htk", m_s, a["query"]["kernel"]) + a["query"]["bias"][:, None]
  k = np.einsum("td,dhk->htk", m_m[:length_m], a["key"]["kernel"]) + a["key"]["bias"][:, None]
  v = np.einsum("td,dhk->htk", m_m[:length_m], a["value"]["kernel"]) + a["value"]["bias"][:, None]
  scores = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1])
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  o = np.einsum("htk,hkd->td", weights @ v, a["out"]["kernel"]) + a["out"]["bias"]
  m_bar = _layer_norm(g_f * m_s + g_c * o, p["gate_layer_norm"])
  h = np.maximum(dense(m_bar, p["ffn_hidden"]), 0)
  return _layer_norm(m_bar + dense(h, p["ffn_output"]), p["ffn_layer_norm"])


def _pair_inputs(seed, batch=3, steps=7):
  rng = np.random.default_rng(seed)
  m_s = rng.normal(size=(batch, steps, D)).astype(np.float32)
  m_m = rng.normal(size=(batch, steps, D)).astype(np.float32)
  lengths_s = np.array([steps, 2, 4][:batch], np.int32)
  lengths_m = np.array([3, steps, 1][:batch], np.int32)
  for x, lengths in ((m_s, lengths_s), (m_m, lengths_m)):
    for row, length in enumerate(lengths):
      x[row, length:] = 0.0
  return m_s, m_m, lengths_s, lengths_m


def test_layer_matches_numpy_equations():
  m_s, m_m, lengths_s, lengths_m = _pair_inputs(0)
  layer = gt.GatedTransformerLayer(D, HEADS, FFN, dropout_rate=0.1, summary="bigru")
  params = jax.jit(layer.init)(jax.random.PRNGKey(0), m_s, m_m, lengths_s, lengths_m)["params"]
  new_s, new_m, x_s, x_m = jax.jit(layer.apply)({"params": params}, m_s, m_m, lengths_s, lengths_m)
  for array in (new_s, new_m):
    chex.assert_shape(array, (3, 7, D))
  chex.assert_shape([x_s, x_m], (3, D))

  # Summaries: masked mean of the direction-averaged BiGRU, one module for both.
  summary = sequence.BiGRU(D, merge="mean")
  gru_params = {"params": params["summary"]["bigru"]}
  for x, lengths, got in ((m_s, lengths_s, x_s), (m_m, lengths_m, x_m)):
    states = np.asarray(jax.jit(summary.apply)(gru_params, x, lengths))
    for row, length in enumerate(lengths):
      np.testing.assert_allclose(got[row], states[row, :length].mean(0), atol=1e-6)

  numpy_params = jax.tree.map(lambda a: np.asarray(a, np.float64), params["streams"])
  stream = [jax.tree.map(lambda a, i=i: a[i], numpy_params) for i in range(2)]
  x_s, x_m = np.asarray(x_s, np.float64), np.asarray(x_m, np.float64)
  for row in range(3):
    ls, lm = int(lengths_s[row]), int(lengths_m[row])
    expected_s = _numpy_stream(stream[0], m_s[row], m_m[row], lm, x_s[row], x_m[row])
    expected_m = _numpy_stream(stream[1], m_m[row], m_s[row], ls, x_m[row], x_s[row])
    np.testing.assert_allclose(new_s[row, :ls], expected_s[:ls], atol=2e-5)
    np.testing.assert_allclose(new_m[row, :lm], expected_m[:lm], atol=2e-5)
    np.testing.assert_array_equal(new_s[row, ls:], 0.0)
    np.testing.assert_array_equal(new_m[row, lm:], 0.0)


def test_linear_first_layer_summary():
  m_s, m_m, lengths_s, lengths_m = _pair_inputs(1)
  model = gt.GatedTransformer(D, num_layers=2, num_heads=HEADS, ffn_dim=FFN,
                              first_layer_summary="linear")
  params = model.init(jax.random.PRNGKey(0), m_s, m_m, lengths_s, lengths_m)["params"]
  assert set(params["layer_0"]["summary"]) == {"linear"}
  assert set(params["layer_1"]["summary"]) == {"bigru"}
  _, summaries = model.apply({"params": params}, m_s, m_m, lengths_s, lengths_m)
  linear = params["layer_0"]["summary"]["linear"]
  for row in range(3):
    mean = m_s[row, :lengths_s[row]].mean(0)
    np.testing.assert_allclose(summaries[0, 0, row], mean @ linear["kernel"] + linear["bias"], atol=1e-5)


def test_transformer_heads_and_padding_invariance():
  m_s, m_m, lengths_s, lengths_m = _pair_inputs(2)
  model = gt.GatedTransformer(D, num_layers=2, num_heads=HEADS, ffn_dim=FFN)
  params = model.init(jax.random.PRNGKey(0), m_s, m_m, lengths_s, lengths_m)["params"]
  head, summaries = model.apply({"params": params}, m_s, m_m, lengths_s, lengths_m)
  chex.assert_shape(head, (3, 2 * D))
  chex.assert_shape(summaries, (2, 2, 3, D))
  chex.assert_tree_all_finite((head, summaries))
  row = 1
  # Alone, with its own lengths, and with four more padded steps of junk.
  pad = lambda x: np.concatenate([x[row:row + 1], np.full((1, 4, D), 9.0, np.float32)], axis=1)
  alone_head, alone_summaries = model.apply(
      {"params": params}, pad(m_s), pad(m_m), lengths_s[row:row + 1], lengths_m[row:row + 1])
  np.testing.assert_allclose(alone_head[0], head[row], atol=1e-5)
  np.testing.assert_allclose(alone_summaries[:, :, 0], summaries[:, :, row], atol=1e-5)


def test_dropout_changes_training_only():
  m_s, m_m, lengths_s, lengths_m = _pair_inputs(3)
  model = gt.GatedTransformer(D, num_layers=1, num_heads=HEADS, ffn_dim=FFN, dropout_rate=0.3)
  params = model.init(jax.random.PRNGKey(0), m_s, m_m, lengths_s, lengths_m)["params"]
  eval_head, _ = model.apply({"params": params}, m_s, m_m, lengths_s, lengths_m)
  train_head, _ = model.apply({"params": params}, m_s, m_m, lengths_s, lengths_m, True,
                              rngs={"dropout": jax.random.PRNGKey(1)})
  assert not np.allclose(eval_head, train_head)


def test_two_streams_have_separate_weights():
  m_s, m_m, lengths_s, lengths_m = _pair_inputs(4)
  layer = gt.GatedTransformerLayer(D, HEADS, FFN)
  params = layer.init(jax.random.PRNGKey(0), m_s, m_m, lengths_s, lengths_m)["params"]
  kernel = params["streams"]["filter_gate"]["kernel"]
  chex.assert_shape(kernel, (2, 2 * D, D))  # W_f of shape 2d x d for each direction.
  assert not np.allclose(kernel[0], kernel[1])


def test_pair_stack_matches_single_pairs():
  m_s, m_m, lengths_s, lengths_m = _pair_inputs(5)
  stack = gt.PairStack(D, 1, HEADS, FFN)
  inputs = (np.stack([m_s, m_m]), np.stack([m_m, m_s]),
            np.stack([lengths_s, lengths_m]), np.stack([lengths_m, lengths_s]))
  params = jax.jit(lambda *a: stack.init(jax.random.PRNGKey(0), *a, False))(*inputs)["params"]
  heads, summaries = jax.jit(lambda p, *a: stack.apply({"params": p}, *a, False))(params, *inputs)
  chex.assert_shape(heads, (2, 3, 2 * D))
  chex.assert_shape(summaries, (2, 1, 2, 3, D))
  single = jax.jit(gt.GatedTransformer(D, 1, HEADS, FFN).apply)
  for pair in range(2):
    pair_params = jax.tree.map(lambda a, i=pair: a[i], params)
    head, _ = single({"params": pair_params}, *(x[pair] for x in inputs))
    np.testing.assert_allclose(heads[pair], head, atol=1e-6)


def test_discriminator_shapes_targets_values():
  rng = np.random.default_rng(6)
  summaries = rng.normal(size=(3, 2, 2, 5, D)).astype(np.float32)  # [P, L, 2, B, d]
  stack = gt.DiscriminatorStack(D, 2)
  params = stack.init(jax.random.PRNGKey(0), summaries)["params"]
  chex.assert_shape(params["layer_1"]["hidden"]["kernel"], (3, D, 4 * D))
  chex.assert_shape(params["layer_1"]["output"]["kernel"], (3, 4 * D, 1))
  logits, targets = stack.apply({"params": params}, summaries)
  chex.assert_shape([logits, targets], (3, 2, 2, 5))
  np.testing.assert_array_equal(targets[:, :, 0], 0.0)
  np.testing.assert_array_equal(targets[:, :, 1], 1.0)
  p = jax.tree.map(lambda a: np.asarray(a[2], np.float64), params["layer_1"])
  h = np.maximum(summaries[2, 1, 1, 4] @ p["hidden"]["kernel"] + p["hidden"]["bias"], 0)
  expected = h @ p["output"]["kernel"][:, 0] + p["output"]["bias"][0]
  np.testing.assert_allclose(logits[2, 1, 1, 4], expected, atol=1e-5)


def test_invalid_summary_kind():
  m_s, m_m, lengths_s, lengths_m = _pair_inputs(7)
  model = gt.GatedTransformer(D, 1, HEADS, FFN, first_layer_summary="mean")
  with pytest.raises(ValueError, match="first_layer_summary"):
    model.init(jax.random.PRNGKey(0), m_s, m_m, lengths_s, lengths_m)


def test_bfloat16_layer_outputs():
  m_s, m_m, lengths_s, lengths_m = _pair_inputs(8)
  model = gt.GatedTransformer(D, 1, HEADS, FFN, dtype=jnp.bfloat16)
  variables = model.init(jax.random.PRNGKey(0), m_s, m_m, lengths_s, lengths_m)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  head, _ = model.apply(variables, m_s, m_m, lengths_s, lengths_m)
  assert head.dtype == jnp.bfloat16
  chex.assert_tree_all_finite(head.astype(jnp.float32))
