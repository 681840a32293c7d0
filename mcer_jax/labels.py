"""Self-supervised label generation for the unimodal and cross-modal tasks.

Human labels `y_m` exist only for the multimodal task. For every other head
(t, a, v and the cross-modal mt, ma, mv) a label is generated from distances
to class centres, as in Self-MM's unimodal label generation: MCER's SLGM for
t, a, v and CLGM for mt, ma, mv.

The state lives on the device for the whole training split and is indexed by
the sample's row (`batch["index"]`). It has a feature memory per
representation family (m is the fusion F'_m, t/a/v the H_s, mt/ma/mv the
h_c), a label memory per generated family, initialised to `y_m`, and each
family's class centres. One training step:

  generated = batch_labels(state, batch["index"])   # used by the task loss
  ... loss and gradients ...
  state = update(state, outputs["features"], batch["index"], batch["weight"],
                 epoch, config.labels, label_range=config.data.label_range)

Paper symbols: y_m -> LabelState.human, the generated y_x ->
LabelState.labels[x], C_pos / C_neg -> LabelState.centres[x].positive /
.negative.
"""

from collections.abc import Mapping

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

FUSION = "m"
# Families whose labels are generated, in the order they are reported.
GENERATED = ("t", "a", "v", "mt", "ma", "mv")
FAMILIES = (FUSION, *GENERATED)


@flax.struct.dataclass
class Centres:
  """Class centres of one representation family, each [d_f]."""

  positive: jax.Array
  negative: jax.Array


@flax.struct.dataclass
class LabelState:
  """Label-generation memories for the N samples of the training split.

  Attributes:
    human: [N] human labels y_m; they never change.
    features: family -> [N, d_f] features last stored for each sample, zero
      until the sample is first seen.
    labels: generated family -> [N] current generated labels.
    centres: family -> class centres of its memory.
  """

  human: jax.Array
  features: dict[str, jax.Array]
  labels: dict[str, jax.Array]
  centres: dict[str, Centres]


def init_label_state(
    human_labels, feature_dims: Mapping[str, int], dtype: str = "float32"
) -> LabelState:
  """Creates the state: zero features and centres, generated labels set to y_m.

  Args:
    human_labels: [N] human labels of the training split, in row order.
    feature_dims: family -> feature size d_f, for the families of the enabled
      heads; "m" (the fusion F'_m) is required because every generated label
      is measured against it.
    dtype: "float32", or "float64" for runs with config.model.dtype="float64".

  Returns:
    The initial LabelState, of `dtype`.
  """
  if dtype not in ("float32", "float64"):
    raise ValueError(f"label state dtype must be 'float32' or 'float64', found {dtype!r}.")
  if dtype == "float64" and not jax.config.jax_enable_x64:
    raise ValueError(
        "a float64 label state needs JAX's 64-bit mode, which is off; call "
        "jax.config.update('jax_enable_x64', True) first.")
  human = np.asarray(human_labels, np.float64)
  if human.ndim != 1 or human.size == 0:
    raise ValueError(
        f"human_labels must be a non-empty vector [N] of the training split's labels, found shape "
        f"{human.shape}."
    )
  if not np.all(np.isfinite(human)):
    raise ValueError("human_labels contains NaN or infinite values; check the training labels.")
  unknown = sorted(set(feature_dims) - set(FAMILIES))
  if unknown:
    raise ValueError(f"feature_dims has unknown families {unknown}; expected a subset of {FAMILIES}.")
  if FUSION not in feature_dims:
    raise ValueError(
        "feature_dims has no fusion family 'm'; generated labels are measured against F'_m, so "
        "its size is required."
    )
  for family, dim in feature_dims.items():
    if int(dim) != dim or dim < 1:
      raise ValueError(f"feature_dims[{family!r}] must be a positive integer, found {dim!r}.")

  n = human.shape[0]
  families = [f for f in FAMILIES if f in feature_dims]
  human = jnp.asarray(human, dtype)
  return LabelState(
      human=human,
      features={f: jnp.zeros((n, int(feature_dims[f])), dtype) for f in families},
      labels={f: human for f in families if f != FUSION},
      centres={
          f: Centres(
              positive=jnp.zeros((int(feature_dims[f]),), dtype),
              negative=jnp.zeros((int(feature_dims[f]),), dtype),
          )
          for f in families
      },
  )


def centres(features: jax.Array, labels: jax.Array) -> Centres:
  """Computes the mean of the features whose label is > 0 and of those < 0.

  Samples labelled exactly 0 belong to neither class. A class without samples
  gets the zero vector (Self-MM's mean of an empty set would be NaN). Rows
  of the memory not yet written are zero and count, as in Self-MM.

  Args:
    features: [N, d] feature memory.
    labels: [N] labels of the same rows.
  """

  def class_mean(mask: jax.Array) -> jax.Array:
    total = jnp.sum(jnp.where(mask[:, None], features, 0.0), axis=0)
    return total / jnp.maximum(jnp.sum(mask), 1).astype(features.dtype)

  return Centres(positive=class_mean(labels > 0), negative=class_mean(labels < 0))


def _relative_distance(features: jax.Array, class_centres: Centres, eps: float) -> jax.Array:
  """Returns delta = (d_n - d_p) / (d_p + eps) per row, with d the L2 distances."""
  d_pos = jnp.linalg.norm(features - class_centres.positive, axis=-1)
  d_neg = jnp.linalg.norm(features - class_centres.negative, axis=-1)
  return (d_neg - d_pos) / (d_pos + eps)


def generate(
    x: jax.Array,
    centres_x: Centres,
    fusion: jax.Array,
    centres_f: Centres,
    y_m: jax.Array,
    eps: float,
    label_range: float,
) -> jax.Array:
  """Generates labels of family x from its distances to the class centres.

    delta_x = (d_n(x) - d_p(x)) / (d_p(x) + eps), delta_f likewise for F'_m
    alpha = delta_x / (delta_f + eps)
    y_new = 0.5 alpha y_m + 0.5 (y_m + delta_x - delta_f)
  clipped to [-label_range, label_range]: the offset form y_m + delta of
  Self-MM's and MCER's label generation.

  Args:
    x: [B, d_x] features of family x.
    centres_x: class centres of family x.
    fusion: [B, d_m] fusion features F'_m of the same samples.
    centres_f: class centres of the fusion family.
    y_m: [B] human labels.
    eps: keeps the divisions finite.
    label_range: labels lie in [-label_range, label_range].

  Returns:
    [B] new labels, before smoothing over epochs.
  """
  delta_x = _relative_distance(x, centres_x, eps)
  delta_f = _relative_distance(fusion, centres_f, eps)
  alpha = delta_x / (delta_f + eps)
  y_new = 0.5 * alpha * y_m + 0.5 * (y_m + delta_x - delta_f)
  return jnp.clip(y_new, -label_range, label_range)


def _check_features(state: LabelState, features: Mapping[str, jax.Array]) -> None:
  missing = sorted(set(state.features) - set(features))
  if missing:
    raise ValueError(
        f"features are missing families {missing} that the label state stores; the model's "
        "outputs['features'] must contain every family given to init_label_state."
    )
  for family, memory in state.features.items():
    if features[family].ndim != 2 or features[family].shape[1] != memory.shape[1]:
      raise ValueError(
          f"features[{family!r}] must have shape [batch, {memory.shape[1]}], found "
          f"{features[family].shape}; init_label_state got a different feature size."
      )


def update(
    state: LabelState,
    features: Mapping[str, jax.Array],
    index: jax.Array,
    weight: jax.Array,
    epoch,
    config: ml_collections.ConfigDict,
    *,
    label_range: float,
    axis_name: str | None = None,
) -> LabelState:
  """Updates the labels, the feature memories and the centres after one step.

  In this order, as Self-MM does:
  1. from epoch 2 on, the batch's generated labels become
       y^(e) = (e - 1)/(e + 1) y^(e-1) + 2/(e + 1) y_new
     (plain y_new when config.labels.smoothing is False), with y_new from
     `generate` and the centres of the previous step;
  2. the batch's features are stored;
  3. every family's centres are recomputed from its full memory: the fusion
     family with y_m, the others with their generated labels.
  Padding samples (weight 0) change nothing. Jittable; `epoch` may be traced.

  Args:
    state: the current state.
    features: family -> [B, d_f] features of the batch (model
      outputs["features"]); no gradient flows through them.
    index: [B] int rows of the samples in the training split, in [0, N).
    weight: [B] batch weights, 0 for padding samples.
    epoch: the current epoch, counted from 1.
    config: `config.labels`; eps and smoothing are read at trace time.
    label_range: labels are clipped to [-label_range, label_range]
      (`config.data.label_range`).
    axis_name: under pmap, the device axis. The batch is gathered from all
      devices first, so every replica applies the same update and keeps an
      identical state.

  Returns:
    The updated LabelState.
  """
  _check_features(state, features)
  eps = config.eps
  dtype = state.human.dtype
  features = {f: jax.lax.stop_gradient(features[f]).astype(dtype) for f in state.features}
  index = jnp.asarray(index, jnp.int32)
  weight = jnp.asarray(weight, dtype)
  if axis_name is not None:
    features = {
        f: jax.lax.all_gather(x, axis_name, tiled=True) for f, x in features.items()
    }
    index = jax.lax.all_gather(index, axis_name, tiled=True)
    weight = jax.lax.all_gather(weight, axis_name, tiled=True)

  n = state.human.shape[0]
  # Padding rows get the out-of-range index n, which mode="drop" ignores;
  # their own index (0) is a real sample's row.
  scatter_index = jnp.where(weight > 0, index, n)
  y_m = state.human[index]
  epoch = jnp.asarray(epoch, dtype)

  labels = {}
  for family, memory in state.labels.items():
    previous = memory[index]
    y_new = generate(
        features[family], state.centres[family], features[FUSION], state.centres[FUSION], y_m,
        eps, label_range,
    )
    if config.smoothing:
      y_new = (epoch - 1.0) / (epoch + 1.0) * previous + 2.0 / (epoch + 1.0) * y_new
    new = jnp.where(epoch >= 2, y_new, previous)
    labels[family] = memory.at[scatter_index].set(new, mode="drop")

  stored = {
      f: memory.at[scatter_index].set(features[f], mode="drop")
      for f, memory in state.features.items()
  }
  new_centres = {
      f: centres(memory, state.human if f == FUSION else labels[f])
      for f, memory in stored.items()
  }
  return LabelState(human=state.human, features=stored, labels=labels, centres=new_centres)


def batch_labels(state: LabelState, index: jax.Array) -> dict[str, jax.Array]:
  """Returns generated family -> [B] current labels of the batch's rows.

  Call it before `update` so the task loss uses the labels as they were
  before this step. Padding rows read row `index` (0) and must be masked by
  the batch weight, as the losses do.
  """
  return {family: memory[index] for family, memory in state.labels.items()}


def generated_labels(state: LabelState) -> dict[str, np.ndarray]:
  """Returns generated family -> [N] labels of every training sample, on the host."""
  return {family: np.asarray(jax.device_get(memory)) for family, memory in state.labels.items()}
