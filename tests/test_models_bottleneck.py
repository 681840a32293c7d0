"""Tests of the variational (VIB) and deterministic regression heads."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from mcer_jax.models import bottleneck


def _softplus(x):
  return np.log1p(np.exp(x))


def test_gaussian_kl_closed_form():
  rng = np.random.default_rng(0)
  mu = rng.normal(size=(4, 6))
  sigma = np.exp(rng.normal(size=(4, 6)) * 0.5)
  kl = bottleneck.gaussian_kl(jnp.asarray(mu), jnp.asarray(sigma))
  chex.assert_shape(kl, (4,))
  # KL(N(mu, s^2) || N(0, 1)) = log(1/s) + (s^2 + mu^2) / 2 - 1/2 per dimension.
  expected = np.sum(-np.log(sigma) + (sigma**2 + mu**2) / 2 - 0.5, axis=-1)
  np.testing.assert_allclose(kl, expected, rtol=1e-5)
  np.testing.assert_allclose(bottleneck.gaussian_kl(jnp.zeros((2, 3)), jnp.ones((2, 3))), 0.0, atol=1e-7)


def test_stochastic_head_values():
  rng = np.random.default_rng(1)
  features = rng.normal(size=(5, 7)).astype(np.float32)
  ids = np.arange(5, dtype=np.int32)
  head = bottleneck.RegressionHead(hidden_dim=6, stochastic=True, latent_dim=3, min_sigma=0.01)
  params = head.init(jax.random.PRNGKey(0), features, ids)["params"]
  assert set(params) == {"layer_2", "encoder", "layer_3"}
  chex.assert_shape(params["layer_3"]["kernel"], (3, 1))
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  h = np.maximum(features @ p["layer_2"]["kernel"] + p["layer_2"]["bias"], 0)
  mu = h @ p["encoder"]["mu"]["kernel"] + p["encoder"]["mu"]["bias"]
  sigma = _softplus(h @ p["encoder"]["sigma"]["kernel"] + p["encoder"]["sigma"]["bias"]) + 0.01
  expected_kl = np.sum(-np.log(sigma) + (sigma**2 + mu**2) / 2 - 0.5, axis=-1)

  prediction, kl = head.apply({"params": params}, features, ids)
  chex.assert_shape([prediction, kl], (5,))
  assert prediction.dtype == jnp.float32
  # Evaluation uses z = mu.
  np.testing.assert_allclose(prediction, (mu @ p["layer_3"]["kernel"] + p["layer_3"]["bias"])[:, 0], atol=1e-5)
  np.testing.assert_allclose(kl, expected_kl, rtol=1e-5)

  train_prediction, train_kl = head.apply({"params": params}, features, ids, train=True,
                                         rngs={"sample": jax.random.PRNGKey(7)})
  np.testing.assert_allclose(train_kl, expected_kl, rtol=1e-5)
  assert not np.allclose(train_prediction, prediction)


def test_noise_follows_sample_index():
  rng = np.random.default_rng(2)
  features = rng.normal(size=(4, 7)).astype(np.float32)
  head = bottleneck.RegressionHead(hidden_dim=6, stochastic=True, latent_dim=3)
  ids = np.array([10, 11, 12, 13], np.int32)
  params = head.init(jax.random.PRNGKey(0), features, ids)["params"]
  key = {"sample": jax.random.PRNGKey(3)}
  first, _ = head.apply({"params": params}, features, ids, train=True, rngs=key)
  order = np.array([2, 0, 3, 1])
  shuffled, _ = head.apply({"params": params}, features[order], ids[order], train=True, rngs=key)
  np.testing.assert_allclose(shuffled, first[order], atol=1e-6)
  alone, _ = head.apply({"params": params}, features[1:2], ids[1:2], train=True, rngs=key)
  np.testing.assert_allclose(alone[0], first[1], atol=1e-6)


def test_per_sample_normal_statistics():
  ids = jnp.arange(4000)
  eps = np.asarray(bottleneck.per_sample_normal(jax.random.PRNGKey(0), ids, 8))
  chex.assert_shape(eps, (4000, 8))
  # Standard normal: mean 0 and variance 1 within a few standard errors.
  assert abs(eps.mean()) < 0.02
  assert abs(eps.var() - 1.0) < 0.03
  again = np.asarray(bottleneck.per_sample_normal(jax.random.PRNGKey(0), ids[::-1], 8))
  np.testing.assert_array_equal(again, eps[::-1])


def test_reparameterisation_and_min_sigma():
  encoder = bottleneck.VariationalEncoder(latent_dim=4, min_sigma=0.5)
  rows = 2000
  h = -10.0 * jnp.ones((rows, 5))
  ids = jnp.arange(rows)
  params = encoder.init(jax.random.PRNGKey(0), h, ids)["params"]
  # Kernels of ones and zero biases: mu = -50 and softplus(-50) ~ 0, so sigma = min_sigma.
  params = jax.tree.map(jnp.ones_like, params)
  params["mu"]["bias"] = jnp.zeros(4)
  params["sigma"]["bias"] = jnp.zeros(4)
  z, kl = encoder.apply({"params": params}, h, ids, train=True, rngs={"sample": jax.random.PRNGKey(1)})
  chex.assert_shape(z, (rows, 4))
  eps = (np.asarray(z) + 50.0) / 0.5
  assert abs(eps.mean()) < 0.05
  assert abs(eps.std() - 1.0) < 0.05
  expected_kl = 4 * (-np.log(0.5) + (0.25 + 2500.0) / 2 - 0.5)
  np.testing.assert_allclose(kl, expected_kl, rtol=1e-5)
  z_eval, _ = encoder.apply({"params": params}, h, ids)
  np.testing.assert_allclose(z_eval, -50.0)


def test_deterministic_head_is_self_mm_shape():
  rng = np.random.default_rng(3)
  features = rng.normal(size=(4, 7)).astype(np.float32)
  ids = np.arange(4, dtype=np.int32)
  head = bottleneck.RegressionHead(hidden_dim=6, stochastic=False)
  params = head.init(jax.random.PRNGKey(0), features, ids)["params"]
  assert set(params) == {"layer_2", "layer_3"}
  prediction, kl = head.apply({"params": params}, features, ids, train=True,
                              rngs={"sample": jax.random.PRNGKey(0)})
  assert kl is None
  p = params
  h = np.maximum(features @ p["layer_2"]["kernel"] + p["layer_2"]["bias"], 0)
  np.testing.assert_allclose(prediction, (h @ p["layer_3"]["kernel"] + p["layer_3"]["bias"])[:, 0], atol=1e-5)
