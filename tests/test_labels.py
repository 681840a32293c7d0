"""Tests of label generation against a plain-numpy reference of Self-MM's rules."""

import functools
import json
import os
import pathlib
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcer_jax import config as config_lib
from mcer_jax import labels

REPO = pathlib.Path(__file__).resolve().parents[1]
EPS = 1e-8


def _labels_config(smoothing=True):
  config = config_lib.get_base_config().labels
  config.eps = EPS
  config.smoothing = smoothing
  return config


class NumpyLabels:
  """Self-MM's label generation written sample by sample in float64."""

  def __init__(self, human, dims):
    self.human = np.asarray(human, np.float64)
    n = len(self.human)
    self.features = {f: np.zeros((n, d)) for f, d in dims.items()}
    self.labels = {f: self.human.copy() for f in dims if f != "m"}
    self.pos = {f: np.zeros(d) for f, d in dims.items()}
    self.neg = {f: np.zeros(d) for f, d in dims.items()}

  def _delta(self, family, x):
    d_p = np.sqrt(np.sum((x - self.pos[family]) ** 2))
    d_n = np.sqrt(np.sum((x - self.neg[family]) ** 2))
    return (d_n - d_p) / (d_p + EPS)

  def step(self, features, index, weight, epoch, label_range, smoothing=True):
    real = [i for i in range(len(index)) if weight[i] > 0]
    # 1. Labels, with the centres of the previous step.
    if epoch > 1:
      new_labels = {f: self.labels[f].copy() for f in self.labels}
      for i in real:
        row = index[i]
        y_m = self.human[row]
        delta_f = self._delta("m", features["m"][i])
        for family in self.labels:
          delta_x = self._delta(family, features[family][i])
          alpha = delta_x / (delta_f + EPS)
          y_new = 0.5 * alpha * y_m + 0.5 * (y_m + delta_x - delta_f)
          y_new = min(max(y_new, -label_range), label_range)
          if smoothing:
            y_new = (epoch - 1) / (epoch + 1) * self.labels[family][row] + 2 / (epoch + 1) * y_new
          new_labels[family][row] = y_new
      self.labels = new_labels
    # 2. Features.
    for i in real:
      for family in self.features:
        self.features[family][index[i]] = features[family][i]
    # 3. Centres from the full memories; exactly-0 labels in neither class.
    for family, memory in self.features.items():
      current = self.human if family == "m" else self.labels[family]
      positive = [memory[r] for r in range(len(current)) if current[r] > 0]
      negative = [memory[r] for r in range(len(current)) if current[r] < 0]
      dim = memory.shape[1]
      self.pos[family] = np.mean(positive, axis=0) if positive else np.zeros(dim)
      self.neg[family] = np.mean(negative, axis=0) if negative else np.zeros(dim)


def _assert_state_matches(state, reference, scale=1.0):
  """Compares with float32 tolerances, times `scale` (smaller for a float64 state)."""
  for family in reference.features:
    np.testing.assert_allclose(state.features[family], reference.features[family], rtol=1e-5 * scale, atol=1e-6 * scale)
    np.testing.assert_allclose(state.centres[family].positive, reference.pos[family], rtol=1e-5 * scale, atol=1e-6 * scale)
    np.testing.assert_allclose(state.centres[family].negative, reference.neg[family], rtol=1e-5 * scale, atol=1e-6 * scale)
  for family in reference.labels:
    np.testing.assert_allclose(state.labels[family], reference.labels[family], rtol=1e-4 * scale, atol=1e-5 * scale)


def _run_epochs(human, dims, num_epochs, batch_size, label_range, smoothing, seed, dtype="float32"):
  """Runs jitted updates and the reference side by side over shuffled, padded batches."""
  rng = np.random.default_rng(seed)
  n = len(human)
  scale = 1e-6 if dtype == "float64" else 1.0
  state = labels.init_label_state(human, dims, dtype)
  reference = NumpyLabels(human, dims)
  update = jax.jit(
      functools.partial(
          labels.update, config=_labels_config(smoothing), label_range=label_range
      )
  )
  for epoch in range(1, num_epochs + 1):
    order = rng.permutation(n)
    for start in range(0, n, batch_size):
      rows = order[start:start + batch_size]
      padding = batch_size - len(rows)
      # Padding rows point at row 0 (a real sample) and carry other features.
      index = np.concatenate([rows, np.zeros(padding, np.int64)]).astype(np.int32)
      weight = np.concatenate([np.ones(len(rows)), np.zeros(padding)]).astype(np.float32)
      features = {
          f: rng.normal(loc=0.5 * np.sign(human[index])[:, None], size=(batch_size, d)).astype(np.float32)
          for f, d in dims.items()
      }
      before = labels.batch_labels(state, jnp.asarray(index))
      for family, values in before.items():
        np.testing.assert_allclose(values, reference.labels[family][index], rtol=1e-4 * scale, atol=1e-5 * scale)
      state = update(state, features, index, weight, jnp.asarray(epoch))
      reference.step(features, index, weight, epoch, label_range, smoothing)
      _assert_state_matches(state, reference, scale)
  return state, reference


HUMAN = np.array([1.2, -0.6, 0.0, 2.8, -2.0, 0.4, -1.4, 0.0, 3.0, -0.2, 1.0], np.float32)


def test_update_matches_reference_over_epochs():
  dims = {"m": 4, "t": 3, "v": 2, "mv": 5}
  state, reference = _run_epochs(HUMAN, dims, num_epochs=3, batch_size=4, label_range=3.0,
                                 smoothing=True, seed=0)
  # The generated labels moved away from y_m after epoch 1.
  assert np.max(np.abs(np.asarray(state.labels["t"]) - HUMAN)) > 0.1
  assert set(state.labels) == {"t", "v", "mv"}
  np.testing.assert_array_equal(state.human, HUMAN)


def test_float64_update_matches_reference_closely():
  dims = {"m": 4, "t": 3, "mv": 5}
  with jax.enable_x64(False), pytest.raises(ValueError, match="64-bit"):
    labels.init_label_state(HUMAN, dims, "float64")
  with jax.enable_x64(True):
    state, _ = _run_epochs(HUMAN, dims, num_epochs=3, batch_size=4, label_range=3.0,
                           smoothing=True, seed=2, dtype="float64")
  assert state.labels["t"].dtype == jnp.float64
  assert state.centres["m"].positive.dtype == jnp.float64


def test_update_without_smoothing_matches_reference():
  _run_epochs(HUMAN, {"m": 3, "a": 2, "mt": 3}, num_epochs=3, batch_size=4, label_range=1.5,
              smoothing=False, seed=1)


def test_update_with_empty_negative_class_matches_reference():
  # No negative human label: the fusion family's negative centre stays zero.
  human = np.array([0.6, 0.0, 2.0, 1.4, 0.2, 3.0], np.float32)
  state, _ = _run_epochs(human, {"m": 3, "t": 2}, num_epochs=3, batch_size=4, label_range=3.0,
                         smoothing=True, seed=2)
  np.testing.assert_array_equal(state.centres["m"].negative, 0.0)


def test_epoch_one_keeps_human_labels():
  state = labels.init_label_state(HUMAN, {"m": 2, "t": 2})
  features = {"m": jnp.ones((3, 2)), "t": -jnp.ones((3, 2))}
  state = labels.update(state, features, jnp.array([1, 2, 3]), jnp.ones(3), 1, _labels_config(),
                        label_range=3.0)
  np.testing.assert_array_equal(state.labels["t"], HUMAN)
  np.testing.assert_array_equal(state.features["t"][1:4], -1.0)


def test_padding_rows_change_nothing():
  state = labels.init_label_state(HUMAN, {"m": 2, "t": 2})
  state = labels.update(state, {"m": jnp.ones((11, 2)), "t": jnp.ones((11, 2))},
                        jnp.arange(11), jnp.ones(11), 1, _labels_config(), label_range=3.0)
  # A batch of padding only, pointing at row 0 with other features, at epoch 3.
  padded = labels.update(state, {"m": jnp.full((2, 2), 9.0), "t": jnp.full((2, 2), -9.0)},
                         jnp.zeros(2, jnp.int32), jnp.zeros(2), 3, _labels_config(),
                         label_range=3.0)
  chex.assert_trees_all_equal(padded, state)


def test_centres_exclude_zero_labels():
  features = jnp.array([[1.0, 0.0], [3.0, 2.0], [100.0, 100.0], [-2.0, 4.0]])
  result = labels.centres(features, jnp.array([0.5, 2.0, 0.0, -1.0]))
  np.testing.assert_allclose(result.positive, [2.0, 1.0])
  np.testing.assert_allclose(result.negative, [-2.0, 4.0])


def test_centres_of_empty_class_are_zero():
  result = labels.centres(jnp.ones((3, 2)), jnp.array([0.0, 1.0, 2.0]))
  np.testing.assert_array_equal(result.negative, [0.0, 0.0])
  np.testing.assert_array_equal(result.positive, [1.0, 1.0])


def test_generate_hand_values():
  # x: d_p = 1, d_n = 3 -> delta_x = 2; fusion: d_p = 2, d_n = 2 -> delta_f = 0.
  x = jnp.array([[1.0, 0.0]])
  centres_x = labels.Centres(positive=jnp.array([0.0, 0.0]), negative=jnp.array([4.0, 0.0]))
  fusion = jnp.array([[0.0, 0.0]])
  centres_f = labels.Centres(positive=jnp.array([2.0, 0.0]), negative=jnp.array([-2.0, 0.0]))
  eps = 0.5
  # delta_x = 2 / 1.5, delta_f = 0, alpha = (4 / 3) / 0.5 = 8 / 3.
  # y_new = 0.5 * 8/3 * 0.3 + 0.5 * (0.3 + 4/3) = 0.4 + 0.81666...
  y_new = labels.generate(x, centres_x, fusion, centres_f, jnp.array([0.3]), eps, 3.0)
  np.testing.assert_allclose(y_new, [0.4 + 0.5 * (0.3 + 4 / 3)], rtol=1e-6)
  clipped = labels.generate(x, centres_x, fusion, centres_f, jnp.array([0.3]), eps, 1.0)
  np.testing.assert_allclose(clipped, [1.0])


def test_batch_labels_and_generated_labels():
  state = labels.init_label_state(HUMAN, {"m": 2, "t": 2, "ma": 3})
  batch = labels.batch_labels(state, jnp.array([3, 0]))
  assert set(batch) == {"t", "ma"}
  np.testing.assert_array_equal(batch["ma"], HUMAN[[3, 0]])
  host = labels.generated_labels(state)
  assert isinstance(host["t"], np.ndarray)
  np.testing.assert_array_equal(host["t"], HUMAN)


def test_init_rejects_missing_fusion():
  with pytest.raises(ValueError, match="no fusion family 'm'"):
    labels.init_label_state(HUMAN, {"t": 2})


def test_init_rejects_unknown_family():
  with pytest.raises(ValueError, match=r"unknown families \['x'\]"):
    labels.init_label_state(HUMAN, {"m": 2, "x": 2})


def test_init_rejects_non_finite_labels():
  with pytest.raises(ValueError, match="NaN or infinite"):
    labels.init_label_state(np.array([0.0, np.nan]), {"m": 2})


def test_update_rejects_missing_features():
  state = labels.init_label_state(HUMAN, {"m": 2, "t": 2})
  with pytest.raises(ValueError, match=r"missing families \['t'\]"):
    labels.update(state, {"m": jnp.ones((1, 2))}, jnp.zeros(1, jnp.int32), jnp.ones(1), 2,
                  _labels_config(), label_range=3.0)


def test_update_rejects_wrong_feature_size():
  state = labels.init_label_state(HUMAN, {"m": 2, "t": 2})
  with pytest.raises(ValueError, match=r"features\['t'\] must have shape \[batch, 2\]"):
    labels.update(state, {"m": jnp.ones((1, 2)), "t": jnp.ones((1, 5))}, jnp.zeros(1, jnp.int32),
                  jnp.ones(1), 2, _labels_config(), label_range=3.0)


# The pmap check runs in a fresh interpreter: the fake-device flag only takes
# effect before jax initialises its CPU backend, which this process has done.
_PMAP_SCRIPT = r"""
import functools, json
import jax, jax.numpy as jnp, numpy as np
from mcer_jax import config as config_lib, labels

devices = jax.local_device_count()
assert devices == 8, devices
config = config_lib.get_base_config().labels
human = np.array([1.2, -0.6, 0.0, 2.8, -2.0, 0.4, -1.4, 0.0, 3.0, -0.2, 1.0, -2.5, 0.8], np.float32)
dims = {"m": 3, "t": 2, "mt": 4}
single = labels.init_label_state(human, dims)
replicated = jax.tree.map(lambda x: np.stack([np.asarray(x)] * devices), single)
one_device = jax.jit(functools.partial(labels.update, config=config, label_range=3.0))
pmapped = jax.pmap(
    functools.partial(labels.update, config=config, label_range=3.0, axis_name="batch"),
    axis_name="batch", in_axes=(0, 0, 0, 0, None))
rng = np.random.default_rng(0)
batch = 16
for epoch in (1, 2, 3):
  order = rng.permutation(len(human))
  index = np.zeros(batch, np.int32)
  weight = np.zeros(batch, np.float32)
  # 13 real samples spread over the 8 devices, padding rows in between.
  slots = np.sort(rng.choice(batch, len(human), replace=False))
  index[slots] = order
  weight[slots] = 1.0
  features = {f: rng.normal(size=(batch, d)).astype(np.float32) for f, d in dims.items()}
  single = one_device(single, features, index, weight, jnp.asarray(epoch))
  split = lambda x: x.reshape((devices, -1) + x.shape[1:])
  replicated = pmapped(replicated, {f: split(x) for f, x in features.items()}, split(index),
                       split(weight), jnp.asarray(epoch))
leaves = jax.tree.leaves(jax.device_get(replicated))
expected = jax.tree.leaves(jax.device_get(single))
print(json.dumps({
    "max_difference": max(float(np.max(np.abs(r - e[None]))) for r, e in zip(leaves, expected)),
    "replica_spread": max(float(np.max(np.abs(r - r[:1]))) for r in leaves),
    "labels_moved": float(np.max(np.abs(np.asarray(single.labels["t"]) - human))),
}))
"""


def test_pmap_update_matches_one_device():
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
  completed = subprocess.run(
      [sys.executable, "-c", _PMAP_SCRIPT], env=env, cwd=REPO, capture_output=True, text=True,
      timeout=300, check=False,
  )
  assert completed.returncode == 0, completed.stderr[-3000:]
  result = json.loads(completed.stdout.strip().splitlines()[-1])
  assert result["replica_spread"] == 0.0
  assert result["max_difference"] < 1e-5
  assert result["labels_moved"] > 0.1
