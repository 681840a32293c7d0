"""Tests of the loss functions against plain-numpy formulas and hand values."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcer_jax import config as config_lib
from mcer_jax import losses


# Jitted once per module: op-by-op dispatch of these small graphs costs
# seconds per call on two CPU cores.
_discriminator = jax.jit(
    losses.discriminator_loss, static_argnames=("group_size", "layer_average")
)
_discriminator_and_grad = jax.jit(
    jax.value_and_grad(losses.discriminator_loss), static_argnames=("group_size",)
)
_entropy = jax.jit(losses.gaussian_mixture_entropy, static_argnames=("ridge",))
_entropy_and_grad = jax.jit(
    jax.value_and_grad(losses.gaussian_mixture_entropy), static_argnames=("ridge",)
)
_mutual_information = jax.jit(losses.mutual_information_loss, static_argnames=("form",))


def _loss_config(**overrides):
  config = config_lib.get_base_config().loss
  # The reference values below use the plain log-density of q(y|x).
  config.mi_logvar_bound = 0.0
  for key, value in overrides.items():
    config[key] = value
  return config


def _numpy_bce(logits, targets):
  """Per-prediction BCE in float64 from sigmoid probabilities."""
  p = 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))
  t = np.asarray(targets, np.float64)
  return -(t * np.log(p) + (1 - t) * np.log(1 - p))


# --- weighted_l1, generated_label_weight, kl_loss -----------------------------


def test_weighted_l1_hand_values():
  pred = jnp.array([1.0, 2.0, -1.0, 5.0])
  target = jnp.zeros(4)
  sample_weight = jnp.array([1.0, 0.5, 2.0, 9.0])
  padding = jnp.array([1.0, 1.0, 1.0, 0.0])
  # Real samples: 1 * 1 + 0.5 * 2 + 2 * 1 = 4; the padding row (9 * 5) is ignored.
  assert losses.weighted_l1(pred, target, sample_weight, padding, "count") == pytest.approx(4 / 3)
  assert losses.weighted_l1(pred, target, sample_weight, padding, "weight") == pytest.approx(4 / 3.5)


def test_weighted_l1_all_padding_is_zero():
  pred = jnp.array([1.0, 2.0])
  zeros = jnp.zeros(2)
  for normalization in ("count", "weight"):
    loss = losses.weighted_l1(pred, zeros, jnp.ones(2), zeros, normalization)
    assert loss == 0.0
    grad = jax.grad(lambda p: losses.weighted_l1(p, zeros, jnp.ones(2), zeros, normalization))(pred)
    chex.assert_trees_all_equal(grad, zeros)


def test_weighted_l1_zero_sample_weights_is_zero():
  # Generated labels equal to y_m give W = 0 everywhere (epoch 1).
  pred = jnp.array([1.0, 2.0])
  for normalization in ("count", "weight"):
    assert losses.weighted_l1(pred, jnp.zeros(2), jnp.zeros(2), jnp.ones(2), normalization) == 0.0


def test_weighted_l1_padding_nan_gets_zero_gradient():
  pred = jnp.array([1.0, jnp.nan, -2.0])
  target = jnp.array([0.5, 0.0, 0.0])
  padding = jnp.array([1.0, 0.0, 1.0])
  loss, grad = jax.value_and_grad(losses.weighted_l1)(pred, target, jnp.ones(3), padding)
  assert loss == pytest.approx((0.5 + 2.0) / 2)
  chex.assert_trees_all_close(grad, jnp.array([0.5, 0.0, -0.5]))


def test_weighted_l1_rejects_unknown_normalization():
  with pytest.raises(ValueError, match="task_normalization"):
    losses.weighted_l1(jnp.zeros(2), jnp.zeros(2), jnp.ones(2), jnp.ones(2), "mean")


def test_generated_label_weight():
  generated = np.array([0.5, -1.0, 2.0, 3.0], np.float32)
  human = np.array([0.5, 1.0, -1.0, 2.5], np.float32)
  chex.assert_trees_all_close(
      losses.generated_label_weight(jnp.asarray(generated), jnp.asarray(human)),
      np.tanh(np.abs(generated - human)),
      rtol=1e-6,
  )


def test_kl_loss_mean_over_real_samples():
  kl = jnp.array([1.0, 3.0, 100.0])
  weight = jnp.array([1.0, 1.0, 0.0])
  assert losses.kl_loss(kl, weight) == pytest.approx(2.0)
  assert losses.kl_loss(kl, jnp.zeros(3)) == 0.0


# --- task_loss ----------------------------------------------------------------


def test_task_loss_matches_numpy():
  rng = np.random.default_rng(0)
  b = 6
  heads = ("m", "t", "mt")
  predictions = {h: rng.normal(size=b).astype(np.float32) for h in heads}
  human = rng.uniform(-3, 3, b).astype(np.float32)
  generated = {h: rng.uniform(-3, 3, b).astype(np.float32) for h in ("t", "mt", "a")}
  weight = np.array([1, 1, 1, 1, 0, 0], np.float32)

  total, terms = losses.task_loss(
      jax.tree.map(jnp.asarray, predictions), jnp.asarray(human),
      jax.tree.map(jnp.asarray, generated), jnp.asarray(weight),
  )

  real = weight > 0
  expected = {"task_m": np.mean(np.abs(predictions["m"] - human)[real])}
  for h in ("t", "mt"):
    w = np.tanh(np.abs(generated[h] - human))
    expected[f"task_{h}"] = np.sum((w * np.abs(predictions[h] - generated[h]))[real]) / real.sum()
  assert set(terms) == set(expected)
  for name, value in expected.items():
    assert terms[name] == pytest.approx(value, rel=1e-5), name
  assert total == pytest.approx(sum(expected.values()), rel=1e-5)


def test_task_loss_needs_generated_labels():
  predictions = {"m": jnp.zeros(2), "a": jnp.zeros(2)}
  with pytest.raises(ValueError, match=r"missing for heads \['a'\]"):
    losses.task_loss(predictions, jnp.zeros(2), {"t": jnp.zeros(2)}, jnp.ones(2))


def test_task_loss_rejects_unknown_head():
  with pytest.raises(ValueError, match="unknown heads"):
    losses.task_loss({"m": jnp.zeros(2), "x": jnp.zeros(2)}, jnp.zeros(2), {}, jnp.ones(2))


def test_task_loss_needs_multimodal_head():
  with pytest.raises(ValueError, match="no multimodal head"):
    losses.task_loss({"t": jnp.zeros(2)}, jnp.zeros(2), {"t": jnp.zeros(2)}, jnp.ones(2))


# --- discriminator_loss -------------------------------------------------------


def _random_discriminator(seed, pairs=3, layers=2, batch=8):
  rng = np.random.default_rng(seed)
  logits = rng.normal(scale=2.0, size=(pairs, layers, 2, batch)).astype(np.float32)
  targets = np.broadcast_to(np.array([0.0, 1.0], np.float32)[:, None], (pairs, layers, 2, batch))
  return logits, np.array(targets)


def test_discriminator_zero_logits_give_log2_per_layer():
  logits = jnp.zeros((3, 4, 2, 5))
  targets = jnp.broadcast_to(jnp.array([0.0, 1.0])[:, None], (3, 4, 2, 5))
  loss = _discriminator(logits, targets, jnp.ones(5))
  # Every prediction is 0.5, BCE log 2; four layers summed, pairs averaged.
  assert loss == pytest.approx(4 * math.log(2.0), rel=1e-6)
  averaged = _discriminator(logits, targets, jnp.ones(5), layer_average=True)
  assert averaged == pytest.approx(4 * math.log(2.0) / 8, rel=1e-6)


def test_discriminator_k1_matches_numpy_bce():
  logits, targets = _random_discriminator(1)
  weight = np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32)
  loss = _discriminator(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weight))

  bce = _numpy_bce(logits, targets)[..., weight > 0]  # [P, L, 2, n_real]
  expected = np.mean(np.sum(bce.mean(axis=(-2, -1)), axis=1))
  assert loss == pytest.approx(expected, rel=1e-5)


def test_discriminator_grouped_matches_numpy():
  logits, targets = _random_discriminator(2, batch=8)
  # Groups of 4: {0..3} all real, {4..7} with one real member (4).
  weight = np.array([1, 1, 1, 1, 1, 0, 0, 0], np.float32)
  loss = _discriminator(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weight), group_size=4)

  p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
  group_a = p[..., 0:4].mean(axis=-1)
  group_b = p[..., 4]
  t = targets[..., 0]

  def bce(prob):
    return -(t * np.log(prob) + (1 - t) * np.log(1 - prob))

  # Group weights 4/4 and 1/4 over both modalities: denominator 2 * 1.25.
  per_layer = (bce(group_a) + 0.25 * bce(group_b)).sum(axis=-1) / 2.5
  expected = per_layer.sum(axis=1).mean()
  assert loss == pytest.approx(expected, rel=1e-5)


def test_discriminator_large_logits_are_stable():
  logits = jnp.array([80.0, -80.0, 30.0, -30.0]).reshape(1, 1, 2, 2)
  targets = jnp.array([1.0, 0.0, 0.0, 1.0]).reshape(1, 1, 2, 2)
  loss, grad = _discriminator_and_grad(logits, targets, jnp.ones(2))
  # BCE of the confident correct predictions is ~exp(-80) ~ 0, the wrong
  # ones about 30 each: (0 + 0 + 30 + 30) / 4.
  assert loss == pytest.approx(15.0, rel=1e-6)
  assert np.all(np.isfinite(grad))


def test_discriminator_grouped_large_logits_are_stable():
  logits = jnp.array([80.0, 90.0, -85.0, -95.0]).reshape(1, 1, 2, 2)
  targets = jnp.array([0.0, 0.0, 1.0, 1.0]).reshape(1, 1, 2, 2)
  loss, grad = _discriminator_and_grad(logits, targets, jnp.ones(2), group_size=2)
  # Group probability (sigmoid(80) + sigmoid(90)) / 2 ~ 1 - exp(-80)/2, so
  # -log(1 - P) ~ 80 + log 2; likewise 85 + log 2 for the second group.
  assert loss == pytest.approx((80 + 85) / 2 + math.log(2.0), rel=1e-5)
  assert np.all(np.isfinite(grad))


def test_discriminator_padding_gets_zero_gradient():
  logits, targets = _random_discriminator(3, batch=4)
  logits[..., 3] = np.nan
  weight = jnp.array([1.0, 1.0, 1.0, 0.0])
  for group_size in (1, 2):
    loss, grad = _discriminator_and_grad(
        jnp.asarray(logits), jnp.asarray(targets), weight, group_size=group_size
    )
    assert np.isfinite(loss)
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad[..., 3], 0.0)
    assert np.all(grad[..., :3] != 0.0)


def test_discriminator_all_padding_is_zero():
  logits, targets = _random_discriminator(4, batch=4)
  assert _discriminator(jnp.asarray(logits), jnp.asarray(targets), jnp.zeros(4), group_size=2) == 0.0


def test_discriminator_rejects_group_not_dividing_batch():
  logits, targets = _random_discriminator(5, batch=6)
  with pytest.raises(ValueError, match="discriminator_group_size"):
    losses.discriminator_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.ones(6), group_size=4)


def test_discriminator_rejects_bad_shape():
  with pytest.raises(ValueError, match=r"\[pairs, layers, 2, batch\]"):
    losses.discriminator_loss(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3, 4)), jnp.ones(4))


# --- mutual information -------------------------------------------------------


def _random_mi(seed, batch=5, dim=3):
  rng = np.random.default_rng(seed)
  return {
      pair: {
          "mean": rng.normal(size=(batch, dim)).astype(np.float32),
          "logvar": rng.normal(scale=0.5, size=(batch, dim)).astype(np.float32),
          "target": rng.normal(size=(batch, dim)).astype(np.float32),
      }
      for pair in ("ta", "tv")
  }


def _numpy_log_density(fields):
  """Log of the product of normal densities, from the density itself."""
  mean, logvar, target = (fields[k].astype(np.float64) for k in ("mean", "logvar", "target"))
  variance = np.exp(logvar)
  density = np.exp(-((target - mean) ** 2) / (2 * variance)) / np.sqrt(2 * np.pi * variance)
  return np.log(np.prod(density, axis=-1))


def test_mutual_information_full_matches_gaussian_density():
  mi = _random_mi(0)
  weight = np.array([1, 1, 1, 0, 1], np.float32)
  loss = _mutual_information(jax.tree.map(jnp.asarray, mi), jnp.asarray(weight))
  real = weight > 0
  expected = -sum(_numpy_log_density(mi[p])[real].mean() for p in ("ta", "tv"))
  assert loss == pytest.approx(expected, rel=1e-5)


def test_mutual_information_mmim_form_is_quadratic_only():
  mi = _random_mi(1)
  weight = np.ones(5, np.float32)
  loss = _mutual_information(jax.tree.map(jnp.asarray, mi), jnp.asarray(weight), form="mmim")
  expected = 0.0
  for fields in mi.values():
    quadratic = (fields["target"] - fields["mean"]) ** 2 / np.exp(fields["logvar"])
    expected += 0.5 * quadratic.sum(axis=-1).mean()
  assert loss == pytest.approx(expected, rel=1e-5)


def test_mutual_information_adds_entropy():
  mi = _random_mi(2)
  weight = jnp.ones(5)
  base = losses.mutual_information_loss(jax.tree.map(jnp.asarray, mi), weight)
  with_entropy = losses.mutual_information_loss(
      jax.tree.map(jnp.asarray, mi), weight, entropy={"ta": jnp.array(0.75), "tv": jnp.array(-0.25)}
  )
  assert with_entropy == pytest.approx(float(base) - 0.5, rel=1e-6)


def test_mutual_information_padding_gets_zero_gradient():
  mi = jax.tree.map(jnp.asarray, _random_mi(3))
  mi["ta"]["mean"] = mi["ta"]["mean"].at[4].set(jnp.inf)
  weight = jnp.array([1.0, 1.0, 1.0, 1.0, 0.0])
  loss, grad = jax.jit(jax.value_and_grad(losses.mutual_information_loss))(mi, weight)
  assert np.isfinite(loss)
  for pair in ("ta", "tv"):
    for key in ("mean", "logvar", "target"):
      np.testing.assert_array_equal(grad[pair][key][4], 0.0)
      assert np.all(np.isfinite(grad[pair][key]))


def test_mutual_information_rejects_unknown_form():
  with pytest.raises(ValueError, match="mi_form"):
    losses.mutual_information_loss(jax.tree.map(jnp.asarray, _random_mi(4)), jnp.ones(5), "club")


# --- entropy estimate and its memory -----------------------------------------


def _numpy_entropy(features, labels, weight, ridge):
  real = weight > 0

  def logdet(mask):
    x = features[real & mask].astype(np.float64)
    dim = features.shape[1]
    covariance = np.cov(x, rowvar=False, bias=True).reshape(dim, dim) if len(x) else np.zeros((dim, dim))
    return np.linalg.slogdet(covariance + ridge * np.eye(dim))[1]

  return 0.25 * (logdet(labels > 0) + logdet(labels < 0))


def test_entropy_matches_numpy_covariance():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(12, 3)).astype(np.float32)
  labels = np.array([1, -1, 2, -2, 0.5, -0.5, 0, 1.5, -1.5, 3, -3, 1], np.float32)
  weight = np.array([1] * 10 + [0] * 2, np.float32)
  estimate = _entropy(jnp.asarray(features), jnp.asarray(labels), jnp.asarray(weight), ridge=1e-3)
  assert estimate == pytest.approx(_numpy_entropy(features, labels, weight, 1e-3), rel=1e-4)


def test_entropy_uses_memory_without_gradient():
  rng = np.random.default_rng(1)
  old = rng.normal(size=(6, 2)).astype(np.float32)
  old_labels = np.array([1, -1, 1, -1, 1, -1], np.float32)
  memory = losses.update_entropy_memory(
      losses.init_entropy_memory(6, 2), jnp.asarray(old), jnp.asarray(old_labels), jnp.ones(6)
  )
  new = rng.normal(size=(6, 2)).astype(np.float32)
  new_labels = np.array([1, 1, -1, -1, 0, 2], np.float32)
  weight = np.array([1, 1, 1, 1, 1, 0], np.float32)

  estimate, grad = _entropy_and_grad(
      jnp.asarray(new), jnp.asarray(new_labels), jnp.asarray(weight), memory, ridge=1e-4
  )
  expected = _numpy_entropy(
      np.concatenate([new, old]), np.concatenate([new_labels, old_labels]),
      np.concatenate([weight, np.ones(6, np.float32)]), 1e-4,
  )
  assert estimate == pytest.approx(expected, rel=1e-4)
  np.testing.assert_array_equal(grad[5], 0.0)  # padding
  np.testing.assert_array_equal(grad[4], 0.0)  # label 0: in neither component
  assert np.all(grad[:4] != 0.0)


def test_entropy_of_empty_component_is_ridge_only():
  features = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
  labels = jnp.array([1.0, 1.0, 1.0])  # no negative samples
  estimate = _entropy(features, labels, jnp.ones(3), ridge=0.1)
  expected = _numpy_entropy(np.asarray(features), np.asarray(labels), np.ones(3), 0.1)
  assert np.isfinite(estimate)
  assert estimate == pytest.approx(expected, rel=1e-5)


def test_entropy_memory_is_a_ring_buffer():
  memory = losses.init_entropy_memory(batch_size=2, dim=1, num_batches=2)
  for step in range(3):
    features = jnp.full((2, 1), float(step))
    memory = losses.update_entropy_memory(memory, features, jnp.full(2, step - 1.0), jnp.ones(2))
  # Step 2 overwrote block 0 (step 0); block 1 still holds step 1.
  np.testing.assert_array_equal(memory.features[:, 0], [2.0, 2.0, 1.0, 1.0])
  np.testing.assert_array_equal(memory.labels, [1.0, 1.0, 0.0, 0.0])
  assert int(memory.next_block) == 1


def test_entropy_memory_rejects_other_batch_size():
  memory = losses.init_entropy_memory(batch_size=4, dim=2)
  with pytest.raises(ValueError, match="init_entropy_memory"):
    losses.update_entropy_memory(memory, jnp.zeros((3, 2)), jnp.zeros(3), jnp.ones(3))


def test_entropy_memory_gathers_devices():
  # Two "devices" via vmap: the stored block is the global batch on both.
  memory = losses.init_entropy_memory(batch_size=4, dim=1)
  features = jnp.arange(4.0).reshape(2, 2, 1)
  update = functools.partial(losses.update_entropy_memory, axis_name="devices")
  stored = jax.vmap(update, in_axes=(None, 0, 0, 0), axis_name="devices")(
      memory, features, jnp.ones((2, 2)), jnp.ones((2, 2))
  )
  for device in range(2):
    np.testing.assert_array_equal(stored.features[device, :, 0], [0.0, 1.0, 2.0, 3.0])


# --- total_loss ---------------------------------------------------------------


def _outputs(seed, batch=6, pairs=3, layers=2, heads=("m", "t", "a", "v", "mt", "ma", "mv")):
  rng = np.random.default_rng(seed)
  logits, targets = _random_discriminator(seed, pairs, layers, batch)
  mi = _random_mi(seed, batch)
  for pair in mi:
    mi[pair]["entropy_features"] = rng.normal(size=(batch, 2)).astype(np.float32)
  outputs = {
      "predictions": {h: rng.normal(size=batch).astype(np.float32) for h in heads},
      "kl": {k: rng.uniform(0, 2, batch).astype(np.float32) for k in ("m", "t", "a", "v")},
      "discriminator_logits": logits,
      "discriminator_targets": targets,
      "mi": mi,
  }
  batch_data = {
      "labels": rng.uniform(-3, 3, batch).astype(np.float32),
      "weight": np.array([1.0] * (batch - 2) + [0.0] * 2, np.float32),
  }
  generated = {h: rng.uniform(-3, 3, batch).astype(np.float32) for h in heads if h != "m"}
  return jax.tree.map(jnp.asarray, (outputs, batch_data, generated))


def test_total_loss_combines_terms():
  outputs, batch, generated = _outputs(0)
  config = _loss_config(alpha=1.9, beta=0.5, gamma=0.05, eta=0.1)
  total, terms = jax.jit(lambda o, b, g: losses.total_loss(o, b, g, config))(outputs, batch, generated)

  weight = batch["weight"]
  task, task_terms = jax.jit(losses.task_loss)(outputs["predictions"], batch["labels"], generated, weight)
  kl_loss = jax.jit(losses.kl_loss)
  expected = {
      **task_terms,
      "task": task,
      "kl_m": kl_loss(outputs["kl"]["m"], weight),
      "kl_avl": sum(kl_loss(outputs["kl"][s], weight) for s in "tav"),
      "discriminator": _discriminator(
          outputs["discriminator_logits"], outputs["discriminator_targets"], weight
      ),
      "mutual_information": _mutual_information(outputs["mi"], weight),
  }
  expected["total"] = (
      task + 1.9 * expected["kl_m"] + 0.5 * expected["kl_avl"]
      + 0.05 * expected["discriminator"] + 0.1 * expected["mutual_information"]
  )
  assert set(terms) == set(expected)
  assert set(task_terms) == {f"task_{h}" for h in ("m", "t", "a", "v", "mt", "ma", "mv")}
  chex.assert_trees_all_close(terms, expected, rtol=1e-5)
  assert total == terms["total"]


def test_total_loss_omits_disabled_terms():
  outputs, batch, generated = _outputs(1, heads=("m", "t", "a", "v"))
  for key in ("kl", "discriminator_logits", "discriminator_targets", "mi"):
    del outputs[key]
  total, terms = jax.jit(lambda o, b, g: losses.total_loss(o, b, g, _loss_config()))(
      outputs, batch, generated
  )
  assert set(terms) == {"task_m", "task_t", "task_a", "task_v", "task", "total"}
  assert total == pytest.approx(float(terms["task"]))


def test_total_loss_unimodal_kl_without_multimodal():
  outputs, batch, generated = _outputs(2)
  del outputs["kl"]["m"]
  _, terms = jax.jit(lambda o, b, g: losses.total_loss(o, b, g, _loss_config()))(
      outputs, batch, generated
  )
  assert "kl_m" not in terms
  assert "kl_avl" in terms


def test_total_loss_padding_changes_nothing():
  outputs, batch, generated = _outputs(3)
  total_loss = jax.jit(lambda o, b, g: losses.total_loss(o, b, g, _loss_config()))
  _, terms = total_loss(outputs, batch, generated)
  # Scramble every value of the two padding rows.
  scrambled = jax.tree.map(lambda x: x.at[..., -2:].set(1e3) if x.shape[-1] == 6 else x, outputs)
  scrambled["mi"] = jax.tree.map(lambda x: x.at[-2:].set(-1e3), outputs["mi"])
  _, scrambled_terms = total_loss(scrambled, batch, generated)
  chex.assert_trees_all_close(scrambled_terms, terms, rtol=1e-6)


def test_total_loss_with_entropy():
  outputs, batch, generated = _outputs(4)
  config = _loss_config(mi_entropy=True, mi_entropy_ridge=1e-3)
  memory = {p: losses.init_entropy_memory(6, 2) for p in ("ta", "tv")}
  _, terms = jax.jit(lambda o, b, g, m: losses.total_loss(o, b, g, config, entropy_memory=m))(
      outputs, batch, generated, memory
  )
  entropy = {
      p: _entropy(
          outputs["mi"][p]["entropy_features"], batch["labels"], batch["weight"], memory[p],
          ridge=1e-3,
      )
      for p in ("ta", "tv")
  }
  assert terms["mi_entropy"] == pytest.approx(float(entropy["ta"] + entropy["tv"]), rel=1e-5)
  plain = _mutual_information(outputs["mi"], batch["weight"])
  assert terms["mutual_information"] == pytest.approx(float(plain - terms["mi_entropy"]), rel=1e-5)


def test_total_loss_entropy_needs_memory():
  outputs, batch, generated = _outputs(5)
  with pytest.raises(ValueError, match="entropy_memory"):
    losses.total_loss(outputs, batch, generated, _loss_config(mi_entropy=True))


def test_total_loss_shares_add_up_across_devices():
  # Two devices via vmap with uneven padding (device 0: 3 real, device 1: 1
  # real): the shares and their gradients must sum to the one-device values.
  outputs, batch, generated = _outputs(6, batch=8)
  batch["weight"] = jnp.array([1, 1, 1, 0, 1, 0, 0, 0], jnp.float32)
  config = _loss_config(mi_entropy=True, discriminator_group_size=2, mi_entropy_ridge=1e-3)
  memory = {p: losses.init_entropy_memory(8, 2) for p in ("ta", "tv")}

  def loss_fn(predictions, outputs, batch, generated, axis_name=None):
    outputs = {**outputs, "predictions": predictions}
    return losses.total_loss(outputs, batch, generated, config, memory, axis_name)

  def split(x, axis):
    return jnp.stack(jnp.split(x, 2, axis=axis))

  (_, one_terms), one_grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      outputs["predictions"], outputs, batch, generated
  )
  split_outputs = {
      **jax.tree.map(lambda x: split(x, 0), {"mi": outputs["mi"], "kl": outputs["kl"]}),
      "discriminator_logits": split(outputs["discriminator_logits"], 3),
      "discriminator_targets": split(outputs["discriminator_targets"], 3),
  }
  device_axes = {"mi": 0, "kl": 0, "discriminator_logits": 0, "discriminator_targets": 0}
  grad_fn = jax.value_and_grad(functools.partial(loss_fn, axis_name="devices"), has_aux=True)
  (_, shares), share_grad = jax.jit(
      jax.vmap(grad_fn, in_axes=(0, device_axes, 0, 0), axis_name="devices")
  )(
      jax.tree.map(lambda x: split(x, 0), outputs["predictions"]),
      split_outputs,
      jax.tree.map(lambda x: split(x, 0), batch),
      jax.tree.map(lambda x: split(x, 0), generated),
  )
  summed = jax.tree.map(lambda x: jnp.sum(x, axis=0), shares)
  chex.assert_trees_all_close(summed, one_terms, rtol=1e-5, atol=1e-6)
  merged_grad = jax.tree.map(lambda x: x.reshape(-1), share_grad)
  chex.assert_trees_all_close(merged_grad, one_grad, rtol=1e-5, atol=1e-7)


def test_mutual_information_detached_target_gets_no_gradient():
  rng = np.random.default_rng(3)
  mean, logvar, target = (jnp.asarray(rng.normal(size=(4, 3)), jnp.float32) for _ in range(3))
  weight = jnp.ones(4)

  def loss_of_target(y, detach):
    mi = {"ta": {"mean": mean, "logvar": logvar, "target": y}}
    return losses.mutual_information_loss(mi, weight, detach_target=detach)

  detached = jax.grad(loss_of_target)(target, True)
  attached = jax.grad(loss_of_target)(target, False)
  np.testing.assert_array_equal(np.asarray(detached), 0.0)
  assert np.abs(np.asarray(attached)).max() > 0


def test_mutual_information_logvar_bound_matches_tanh_formula():
  rng = np.random.default_rng(4)
  mean = rng.normal(size=(5, 2)).astype(np.float32)
  logvar = (rng.normal(size=(5, 2)) * 20).astype(np.float32)
  target = rng.normal(size=(5, 2)).astype(np.float32)
  bound = 5.0
  squashed = bound * np.tanh(logvar.astype(np.float64) / bound)
  log_q = -0.5 * np.sum((target - mean) ** 2 / np.exp(squashed) + squashed + np.log(2 * np.pi), axis=-1)
  mi = {"ta": {"mean": jnp.asarray(mean), "logvar": jnp.asarray(logvar), "target": jnp.asarray(target)}}
  value = losses.mutual_information_loss(mi, jnp.ones(5), logvar_bound=bound)
  np.testing.assert_allclose(float(value), -log_q.mean(), rtol=1e-5)
  assert np.all(np.abs(squashed) < bound)


def test_total_loss_kl_mean_divides_by_latent_dim():
  kl = {"m": jnp.asarray([2.0, 4.0]), "t": jnp.asarray([1.0, 3.0])}
  outputs = {"predictions": {"m": jnp.zeros(2)}, "kl": kl}
  batch = {"labels": jnp.zeros(2), "weight": jnp.ones(2)}
  _, summed = losses.total_loss(outputs, batch, {}, _loss_config(kl_reduction="sum"))
  _, averaged = losses.total_loss(outputs, batch, {}, _loss_config(kl_reduction="mean"), latent_dim=4)
  assert float(summed["kl_m"]) == pytest.approx(3.0)
  assert float(averaged["kl_m"]) == pytest.approx(0.75)
  assert float(averaged["kl_avl"]) == pytest.approx(0.5)
  with pytest.raises(ValueError, match="latent_dim"):
    losses.total_loss(outputs, batch, {}, _loss_config(kl_reduction="mean"))
