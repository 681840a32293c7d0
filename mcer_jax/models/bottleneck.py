"""Regression heads with a variational information bottleneck (VIB) or without.

The stochastic head replaces the middle layer of Self-MM's post-fusion MLP by
a variational encoder:

  h   = ReLU(W2 F + b2)                        (W2m / W2s)
  mu  = W_mu h + b_mu,  sigma = softplus(W_sigma h + b_sigma) + min_sigma
  z   = mu + sigma * eps (training), z = mu (evaluation)
  y   = W3 z + b3                              (DNNDecoder, W3m / W3s)
  KL  = 0.5 * sum_k (mu_k^2 + sigma_k^2 - 1 - 2 log sigma_k)   per sample

The deterministic head is Self-MM's shape, y = W3 ReLU(W2 F + b2) + b3, with
no KL.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def output_dtype(dtype: Any) -> Any:
  """Returns the dtype of the values the losses read: float32, or float64 when activations are float64."""
  return jnp.promote_types(dtype, jnp.float32)


def gaussian_kl(mu: Array, sigma: Array) -> Array:
  """KL(N(mu, diag sigma^2) || N(0, I)) per sample, summed over the last axis."""
  dtype = output_dtype(jnp.result_type(mu, sigma))
  mu = mu.astype(dtype)
  sigma = sigma.astype(dtype)
  return 0.5 * jnp.sum(mu**2 + sigma**2 - 1.0 - 2.0 * jnp.log(sigma), axis=-1)


def per_sample_normal(rng: Array, sample_ids: Array, size: int,
                      dtype: Any = jnp.float32) -> Array:
  """Draws eps [B, size] ~ N(0, I), row i from `fold_in(rng, sample_ids[i])`.

  Noise keyed by the sample's index does not depend on the batch it shares
  or on the device it runs on.
  """
  keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(sample_ids.astype(jnp.uint32))
  return jax.vmap(lambda k: jax.random.normal(k, (size,), dtype))(keys)


class VariationalEncoder(nn.Module):
  """DNNEncoder: mean and std of q(z|h), and a sample z.

  Attributes:
    latent_dim: size of z.
    min_sigma: lower bound added to the softplus std.
    dtype: activation dtype.
  """

  latent_dim: int
  min_sigma: float = 1e-4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h: Array, sample_ids: Array, *,
               train: bool = False) -> tuple[Array, Array]:
    """Encodes h [B, D].

    Args:
      h: the input [B, D].
      sample_ids: int [B], each sample's index (keys its noise).
      train: draws z with rng stream 'sample'; evaluation returns z = mu.

    Returns:
      (z [B, latent_dim] float32, KL [B] float32).
    """
    out_dtype = output_dtype(self.dtype)
    mu = nn.Dense(self.latent_dim, dtype=self.dtype, name="mu")(h).astype(out_dtype)
    sigma_logit = nn.Dense(self.latent_dim, dtype=self.dtype, name="sigma")(h)
    sigma = jax.nn.softplus(sigma_logit.astype(out_dtype)) + self.min_sigma
    kl = gaussian_kl(mu, sigma)
    if not train:
      return mu, kl
    eps = per_sample_normal(self.make_rng("sample"), sample_ids, self.latent_dim, out_dtype)
    return mu + sigma * eps, kl


class RegressionHead(nn.Module):
  """Maps a representation (F'_m or H_s) to a scalar score, through a VIB or not.

  Attributes:
    hidden_dim: width of the middle layer (W2).
    stochastic: True builds the variational encoder and returns a KL.
    latent_dim: size of z (stochastic only).
    min_sigma: lower bound of the std (stochastic only).
    dtype: activation dtype.
  """

  hidden_dim: int
  stochastic: bool = True
  latent_dim: int = 32
  min_sigma: float = 1e-4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: Array, sample_ids: Array, *,
               train: bool = False) -> tuple[Array, Array | None]:
    """Scores features [B, D].

    Returns:
      (prediction [B] float32, KL [B] float32 or None when deterministic).
    """
    h = nn.relu(nn.Dense(self.hidden_dim, dtype=self.dtype, name="layer_2")(features))
    kl = None
    if self.stochastic:
      h, kl = VariationalEncoder(self.latent_dim, self.min_sigma, self.dtype,
                                 name="encoder")(h, sample_ids, train=train)
    y = nn.Dense(1, dtype=self.dtype, name="layer_3")(h)
    return y[:, 0].astype(output_dtype(self.dtype)), kl
