"""The loss terms of MCER, as pure functions of model outputs and the batch.

Total loss: L = L_task + alpha L_m + beta L_avl + gamma L_dc + eta L_MI.
Equation numbers refer to the MCER paper (Zhao et al., IJCNN 2024).

Paper symbols and their functions:
  L_task        -> task_loss (weighted_l1 per head)
  W (eq. 32)    -> generated_label_weight
  L_m, L_avl    -> kl_loss of the multimodal and of the unimodal encoders
  L_dc          -> discriminator_loss
  L_MI          -> mutual_information_loss (gaussian_mixture_entropy for H(y))
  L             -> total_loss

Every function takes the batch's `weight` [B]: 1 for real samples, 0 for the
padding that fills the last batch. Padding rows contribute nothing to a loss
or to its gradient, even when their model outputs are not finite. Means over
the batch are means over its real samples, and a batch without real samples
has loss 0.

Under `jax.pmap`, pass the device axis as `axis_name`. Each function then
returns this device's share of the loss of the global batch: its own
numerator over the denominator summed across devices. So `lax.psum` of the
shares, and of their gradients, gives the global loss and its gradient
exactly, however the padding is spread over the devices.

Inputs follow the model outputs of `docs/interfaces.md`: `predictions[c]` and
`kl[c]` are [B], `discriminator_logits` is [P, n_layers, 2, B], and `mi[pair]`
holds `mean`, `logvar` and `target`, each [B, d].
"""

from collections.abc import Mapping
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections

# Heads in the order their terms are summed and reported.
TASKS = ("m", "t", "a", "v", "mt", "ma", "mv")
UNIMODAL = ("t", "a", "v")
MI_FORMS = ("full", "mmim")
TASK_NORMALIZATIONS = ("count", "weight")


def _zero_padding(x: jax.Array, weight: jax.Array) -> jax.Array:
  """Returns `x` [B, ...] with the rows of weight 0 set to 0.

  Masking the inputs, not only the per-sample losses, keeps the gradient of
  a padding row at 0 even when its value is not finite.
  """
  mask = (weight > 0).reshape(weight.shape + (1,) * (x.ndim - weight.ndim))
  return jnp.where(mask, x, 0.0)


def _weighted_sum(values: jax.Array, weight: jax.Array) -> jax.Array:
  """Returns sum(weight * values) with the rows of weight 0 replaced by 0 first."""
  return jnp.sum(jnp.where(weight > 0, weight * values, 0.0))


def _safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
  """Returns numerator / denominator, or 0 where the denominator is 0."""
  positive = denominator > 0
  return jnp.where(positive, numerator / jnp.where(positive, denominator, 1.0), 0.0)


def _global_sum(value: jax.Array, axis_name: str | None) -> jax.Array:
  """Returns `value` summed over the devices of `axis_name`, without gradient.

  Only denominators (sums of batch weights) go through here, so every device
  divides its own numerator by the global denominator and the per-device
  losses add up to the loss of the global batch.
  """
  value = jax.lax.stop_gradient(value)
  return value if axis_name is None else jax.lax.psum(value, axis_name)


def weighted_mean(values: jax.Array, weight: jax.Array, axis_name: str | None = None) -> jax.Array:
  """Returns sum_i w_i v_i / sum_i w_i over the batch, or 0 when sum_i w_i = 0.

  Args:
    values: [B] per-sample values.
    weight: [B] batch weights (0 for padding samples).
    axis_name: under pmap, the device axis: the denominator is then summed
      over devices, and the result is this device's share of the global mean.
  """
  return _safe_divide(_weighted_sum(values, weight), _global_sum(jnp.sum(weight), axis_name))


def generated_label_weight(y_generated: jax.Array, y_human: jax.Array) -> jax.Array:
  """Returns the per-sample task weight W = tanh(|y_generated - y_m|) (eq. 32).

  Samples whose generated label is far from the human label weigh more in the
  unimodal and cross-modal task losses; W is 0 while the two agree.
  """
  return jnp.tanh(jnp.abs(y_generated - y_human))


def weighted_l1(
    pred: jax.Array,
    target: jax.Array,
    sample_weight: jax.Array,
    padding_weight: jax.Array,
    normalization: str = "count",
    axis_name: str | None = None,
) -> jax.Array:
  """Returns the weighted mean absolute error of one head.

  With w_i = sample_weight_i * padding_weight_i:
    "count":  L1 = sum_i w_i |p_i - t_i| / sum_i padding_weight_i
    "weight": L1 = sum_i w_i |p_i - t_i| / sum_i w_i
  "count" is Self-MM's normalisation (MMSA's `SELF_MM.weighted_loss` takes
  `torch.mean(weighted * |y_pred - y_true|)`, a mean over the batch), so the
  weights W also scale the loss down. "weight" makes it a weighted average of
  |p - t|. Both give 0 when the denominator is 0.

  Args:
    pred: [B] predictions.
    target: [B] labels.
    sample_weight: [B] per-sample weights (1 for the multimodal head, W for
      generated labels).
    padding_weight: [B] batch weights, 0 for padding samples.
    normalization: "count" or "weight".
    axis_name: under pmap, the device axis (see the module docstring).
  """
  if normalization not in TASK_NORMALIZATIONS:
    raise ValueError(
        f"normalization must be one of {TASK_NORMALIZATIONS}, found {normalization!r}; "
        "set config.loss.task_normalization to one of them."
    )
  pred, target, sample_weight = (
      _zero_padding(x, padding_weight) for x in (pred, target, sample_weight)
  )
  per_sample = sample_weight * jnp.abs(pred - target)
  numerator = _weighted_sum(per_sample, padding_weight)
  if normalization == "count":
    denominator = jnp.sum(padding_weight)
  else:
    denominator = jnp.sum(jnp.where(padding_weight > 0, sample_weight * padding_weight, 0.0))
  return _safe_divide(numerator, _global_sum(denominator, axis_name))


def task_loss(
    predictions: Mapping[str, jax.Array],
    human: jax.Array,
    generated: Mapping[str, jax.Array],
    weight: jax.Array,
    normalization: str = "count",
    axis_name: str | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Computes L_task = L1(y_m) + sum_c W_c L1(y_c) + sum_s W_s L1(y_s).

  The multimodal head is compared with the human label `y_m` with weight 1;
  every other head present in `predictions` with its generated label and
  weight W = tanh(|y_generated - y_m|).

  Args:
    predictions: head name (m, t, a, v, mt, ma, mv) -> [B] predictions; "m"
      is required, the others only for enabled tasks.
    human: [B] human labels `y_m`.
    generated: head name -> [B] generated labels, for every head but "m"
      present in `predictions` (`labels.batch_labels`).
    weight: [B] batch weights.
    normalization: see `weighted_l1`.
    axis_name: under pmap, the device axis (see the module docstring).

  Returns:
    (L_task, {"task_<head>": term}) with one term for each head present.
  """
  unknown = sorted(set(predictions) - set(TASKS))
  if unknown:
    raise ValueError(f"predictions has unknown heads {unknown}; expected a subset of {TASKS}.")
  if "m" not in predictions:
    raise ValueError("predictions has no multimodal head 'm'; the model must always output it.")
  missing = sorted(c for c in predictions if c != "m" and c not in generated)
  if missing:
    raise ValueError(
        f"generated labels are missing for heads {missing}; pass labels.batch_labels(...) of a "
        "LabelState built with feature memories for these heads."
    )

  terms = {}
  for head in TASKS:
    if head not in predictions:
      continue
    if head == "m":
      target, sample_weight = human, jnp.ones_like(human)
    else:
      target = generated[head]
      sample_weight = generated_label_weight(target, human)
    terms[f"task_{head}"] = weighted_l1(
        predictions[head], target, sample_weight, weight, normalization, axis_name
    )
  return sum(terms.values()), terms


def kl_loss(kl_per_sample: jax.Array, weight: jax.Array, axis_name: str | None = None) -> jax.Array:
  """Returns the mean over real samples of KL(q(z|x) || N(0, I)).

  Args:
    kl_per_sample: [B] KL of each sample, already summed over latent dims.
    weight: [B] batch weights.
    axis_name: under pmap, the device axis (see the module docstring).
  """
  return weighted_mean(_zero_padding(kl_per_sample, weight), weight, axis_name)


def discriminator_loss(
    logits: jax.Array,
    targets: jax.Array,
    weight: jax.Array,
    group_size: int = 1,
    layer_average: bool = False,
    axis_name: str | None = None,
) -> jax.Array:
  """Computes L_dc, the modality discriminator's binary cross entropy.

  For pair p and layer l the discriminator makes 2n predictions, one per
  sample and modality of the pair. With k = group_size, the n samples of each
  modality are split into n/k consecutive groups; a group's probability is the
  weighted mean of its members' sigmoid probabilities, and its target the
  weighted mean of their targets:
    P_g = sum_{i in g} w_i sigmoid(x_i) / sum_{i in g} w_i
    BCE_g = -[t_g log P_g + (1 - t_g) log(1 - P_g)]
    L_{p,l} = sum_g v_g BCE_g / sum_g v_g,  with v_g = sum_{i in g} w_i / k
  summed over the two modalities' groups, so with k = 1 this is the plain BCE
  averaged over the 2n real predictions. Then
    L_dc = (1/P) sum_p sum_l L_{p,l},  times 1/(2L) when layer_average.
  The grouping is our reading of MCER's eq. 21-22, which do not define the
  index k further. BBFN's code (declare-lab/BBFN) has no groups and averages
  one BCE over all pairs, layers and predictions. log P_g is computed as a
  logsumexp of log-sigmoids, so large logits do not overflow.

  Args:
    logits: [P, n_layers, 2, B] discriminator logits.
    targets: [P, n_layers, 2, B] modality labels in [0, 1].
    weight: [B] batch weights.
    group_size: k; must divide B.
    layer_average: scale by 1/(2 n_layers).
    axis_name: under pmap, the device axis (see the module docstring).

  Returns:
    The scalar L_dc.
  """
  if logits.ndim != 4 or logits.shape[2] != 2:
    raise ValueError(
        f"discriminator_logits must have shape [pairs, layers, 2, batch], found {logits.shape}."
    )
  if targets.shape != logits.shape:
    raise ValueError(
        f"discriminator_targets has shape {targets.shape} but discriminator_logits has "
        f"{logits.shape}; the model must output one target per logit."
    )
  num_pairs, num_layers, _, batch = logits.shape
  if weight.shape != (batch,):
    raise ValueError(f"weight must have shape ({batch},) to match the logits, found {weight.shape}.")
  if group_size < 1 or batch % group_size:
    raise ValueError(
        f"discriminator group size k={group_size} must be a positive divisor of the per-device "
        f"batch size {batch}; set config.loss.discriminator_group_size accordingly."
    )

  num_groups = batch // group_size
  group_shape = (num_pairs, num_layers, 2, num_groups, group_size)
  member_weight = weight.reshape(num_groups, group_size)
  x = jnp.where(member_weight > 0, logits.reshape(group_shape), 0.0)
  t = jnp.where(member_weight > 0, targets.reshape(group_shape), 0.0)

  group_total = jnp.sum(member_weight, axis=-1)
  # Each group's member shares sum to 1; a group of padding only gets equal
  # shares so its (unused) probability stays finite.
  share = jnp.where(
      group_total[:, None] > 0,
      member_weight / jnp.where(group_total > 0, group_total, 1.0)[:, None],
      1.0 / group_size,
  )
  log_p = jax.nn.logsumexp(jax.nn.log_sigmoid(x), axis=-1, b=share)
  log_not_p = jax.nn.logsumexp(jax.nn.log_sigmoid(-x), axis=-1, b=share)
  group_target = jnp.sum(share * t, axis=-1)
  bce = -(group_target * log_p + (1.0 - group_target) * log_not_p)  # [P, L, 2, G]

  group_weight = group_total / group_size
  per_layer = _safe_divide(
      jnp.sum(jnp.where(group_weight > 0, group_weight * bce, 0.0), axis=(-2, -1)),
      2.0 * _global_sum(jnp.sum(group_weight), axis_name),
  )  # [P, L]
  loss = jnp.mean(jnp.sum(per_layer, axis=1))
  if layer_average:
    loss = loss / (2.0 * num_layers)
  return loss


def gaussian_log_likelihood(
    mean: jax.Array, logvar: jax.Array, target: jax.Array, form: str = "full"
) -> jax.Array:
  """Returns log q(y|x) per sample for a diagonal Gaussian q, shape [B].

  "full":  -0.5 sum_d [(y_d - mu_d)^2 / exp(logvar_d) + logvar_d + log 2 pi]
  "mmim":  -0.5 sum_d (y_d - mu_d)^2 / exp(logvar_d), the quadratic term only,
           as MMIM's code (declare-lab/Multimodal-Infomax, MMILB) computes it.
  """
  if form not in MI_FORMS:
    raise ValueError(
        f"mutual-information form must be one of {MI_FORMS}, found {form!r}; "
        "set config.loss.mi_form accordingly."
    )
  squared = jnp.square(target - mean) * jnp.exp(-logvar)
  if form == "full":
    squared = squared + logvar + math.log(2.0 * math.pi)
  return -0.5 * jnp.sum(squared, axis=-1)


def mutual_information_loss(
    mi: Mapping[str, Mapping[str, jax.Array]],
    weight: jax.Array,
    form: str = "full",
    entropy: Mapping[str, jax.Array] | None = None,
    axis_name: str | None = None,
    detach_target: bool = False,
    logvar_bound: float = 0.0,
) -> jax.Array:
  """Computes L_MI = -sum_pairs (E[log q(y|x)] + H(y)), MMIM's lower bound negated.

  E[log q(y|x)] is the mean of `gaussian_log_likelihood` over real samples.
  H(y) is added only for the pairs in `entropy` (see
  `gaussian_mixture_entropy`); without it the bound is the log-likelihood
  alone.

  Args:
    mi: pair name (ta, tv) -> {"mean", "logvar", "target"}, each [B, d].
    weight: [B] batch weights.
    form: "full" or "mmim", see `gaussian_log_likelihood`.
    entropy: optional pair name -> scalar estimate of H(y) (under pmap,
      this device's share, as `gaussian_mixture_entropy` returns it).
    axis_name: under pmap, the device axis (see the module docstring).
    detach_target: stop the gradient into y. Without H(y), maximising
      log q(y|x) through y rewards collapsing y to a constant, which drives
      the full log-density to +inf.
    logvar_bound: when > 0, logvar is squashed smoothly into
      (-logvar_bound, logvar_bound) by `b * tanh(logvar / b)`, which bounds
      log q(y|x) from above.

  Returns:
    The scalar L_MI.
  """
  loss = jnp.zeros(())
  for pair in sorted(mi):
    fields = mi[pair]
    missing = [key for key in ("mean", "logvar", "target") if key not in fields]
    if missing:
      raise ValueError(f"mi[{pair!r}] is missing {missing}; expected mean, logvar and target.")
    mean, logvar, target = (
        _zero_padding(fields[key], weight) for key in ("mean", "logvar", "target")
    )
    if detach_target:
      target = jax.lax.stop_gradient(target)
    if logvar_bound > 0:
      logvar = logvar_bound * jnp.tanh(logvar / logvar_bound)
    log_q = gaussian_log_likelihood(mean, logvar, target, form)
    loss = loss - weighted_mean(log_q, weight, axis_name)
    if entropy is not None and pair in entropy:
      loss = loss - entropy[pair]
  return loss


@flax.struct.dataclass
class EntropyMemory:
  """Projected targets of past batches for MMIM's entropy estimate of one pair.

  A ring buffer of `num_batches` blocks of `batch_size` rows; `weight` is 0 for
  empty slots and for padding samples.
  """

  features: jax.Array  # [num_batches * batch_size, d_e]
  labels: jax.Array  # [num_batches * batch_size]
  weight: jax.Array  # [num_batches * batch_size]
  next_block: jax.Array  # int32 scalar, the block overwritten next


def init_entropy_memory(
    batch_size: int, dim: int, num_batches: int = 1, dtype: Any = jnp.float32
) -> EntropyMemory:
  """Returns an empty memory of `num_batches` batches of `batch_size` rows of size `dim`.

  `batch_size` is the batch that `update_entropy_memory` stores: the global
  batch when it gathers over devices, the per-device batch otherwise. MMIM
  keeps one past batch.
  """
  if batch_size < 1 or dim < 1 or num_batches < 1:
    raise ValueError(
        f"entropy memory needs positive sizes, found batch_size={batch_size}, dim={dim}, "
        f"num_batches={num_batches}; check config.loss.mi_entropy_memory_batches."
    )
  slots = num_batches * batch_size
  return EntropyMemory(
      features=jnp.zeros((slots, dim), dtype),
      labels=jnp.zeros((slots,), dtype),
      weight=jnp.zeros((slots,), dtype),
      next_block=jnp.zeros((), jnp.int32),
  )


def update_entropy_memory(
    memory: EntropyMemory,
    features: jax.Array,
    labels: jax.Array,
    weight: jax.Array,
    axis_name: str | None = None,
) -> EntropyMemory:
  """Stores one batch in the oldest block of the memory.

  Args:
    memory: the memory to update.
    features: [B, d_e] projected targets (`mi[pair]["entropy_features"]`).
    labels: [B] human labels `y_m`; their sign picks the mixture component.
    weight: [B] batch weights.
    axis_name: under pmap, the device axis; the batch is then gathered from
      every device first, so all replicas store the same global batch.

  Returns:
    The updated memory; the stored features carry no gradient.
  """
  dtype = memory.features.dtype
  features = jax.lax.stop_gradient(features).astype(dtype)
  labels = jnp.asarray(labels, dtype)
  weight = jnp.asarray(weight, dtype)
  if axis_name is not None:
    features, labels, weight = (
        jax.lax.all_gather(x, axis_name, tiled=True) for x in (features, labels, weight)
    )
  block = features.shape[0]
  slots = memory.weight.shape[0]
  if slots % block or memory.features.shape[1] != features.shape[1]:
    raise ValueError(
        f"entropy memory of shape {memory.features.shape} cannot store batches of shape "
        f"{features.shape}; create it with init_entropy_memory(batch_size={block}, "
        f"dim={features.shape[1]}, ...)."
    )
  start = memory.next_block * block
  return EntropyMemory(
      features=jax.lax.dynamic_update_slice(memory.features, features, (start, 0)),
      labels=jax.lax.dynamic_update_slice(memory.labels, labels, (start,)),
      weight=jax.lax.dynamic_update_slice(memory.weight, weight, (start,)),
      next_block=(memory.next_block + 1) % (slots // block),
  )


def _component_logdet(
    features: jax.Array, weight: jax.Array, ridge: float
) -> jax.Array:
  """Returns log det of the weighted covariance of `features` plus ridge * I."""
  total = jnp.sum(weight)
  mean = _safe_divide(jnp.sum(weight[:, None] * features, axis=0), total)
  centred = features - mean
  covariance = _safe_divide(
      jnp.einsum("n,ni,nj->ij", weight, centred, centred), total
  ) + ridge * jnp.eye(features.shape[1], dtype=features.dtype)
  return jnp.linalg.slogdet(covariance)[1]


def gaussian_mixture_entropy(
    features: jax.Array,
    labels: jax.Array,
    weight: jax.Array,
    memory: EntropyMemory | None = None,
    ridge: float = 1e-6,
    axis_name: str | None = None,
) -> jax.Array:
  """Estimates H(y) with MMIM's two-component Gaussian mixture.

  The positive (label > 0) and negative (label < 0) samples of the current
  batch and of the memory each get a Gaussian with their mean and full
  covariance; up to constants the mixture's entropy bound is
    H = 0.25 (log det Sigma_pos + log det Sigma_neg)
  as in MMIM's MMILB. Gradients flow through the current batch only. Unlike
  MMIM, `ridge` * I is added to each covariance so a component with fewer
  samples than dimensions (or none) has a finite log det. MMIM also uses the
  memory only once it is full, while here empty slots simply have weight 0.

  Args:
    features: [B, d_e] projected targets of the current batch.
    labels: [B] human labels `y_m`.
    weight: [B] batch weights.
    memory: past batches, or None for the current batch alone.
    ridge: added to the covariance diagonals.
    axis_name: under pmap, the device axis. The batch is gathered from every
      device (gradients flow back to each device's part) and the estimate is
      divided by the number of devices, so its psum over devices is H.

  Returns:
    The scalar estimate of H(y), or this device's share of it under pmap.
  """
  dtype = jnp.promote_types(features.dtype, jnp.float32)
  features = features.astype(dtype)
  labels = jnp.asarray(labels, dtype)
  weight = jnp.where(weight > 0, weight, 0.0).astype(dtype)
  num_devices = 1
  if axis_name is not None:
    features, labels, weight = (
        jax.lax.all_gather(x, axis_name, tiled=True) for x in (features, labels, weight)
    )
    num_devices = jax.lax.psum(1, axis_name)
  if memory is not None:
    features = jnp.concatenate([features, jax.lax.stop_gradient(memory.features)])
    labels = jnp.concatenate([labels, memory.labels])
    weight = jnp.concatenate([weight, memory.weight])
  features = jnp.where(weight[:, None] > 0, features, 0.0)
  logdet_pos = _component_logdet(features, jnp.where(labels > 0, weight, 0.0), ridge)
  logdet_neg = _component_logdet(features, jnp.where(labels < 0, weight, 0.0), ridge)
  return 0.25 * (logdet_pos + logdet_neg) / num_devices


def _entropy_terms(
    mi: Mapping[str, Mapping[str, jax.Array]],
    batch: Mapping[str, jax.Array],
    config: ml_collections.ConfigDict,
    entropy_memory: Mapping[str, EntropyMemory] | None,
    axis_name: str | None,
) -> dict[str, jax.Array]:
  """Returns pair -> H(y) for `total_loss` when config.mi_entropy is on."""
  entropy = {}
  for pair in sorted(mi):
    if "entropy_features" not in mi[pair]:
      raise ValueError(
          f"config.loss.mi_entropy is True but outputs['mi'][{pair!r}] has no "
          "'entropy_features'; the model must output the projected target for the entropy."
      )
    if pair not in entropy_memory:
      raise ValueError(f"entropy_memory has no entry for pair {pair!r}; found {sorted(entropy_memory)}.")
    entropy[pair] = gaussian_mixture_entropy(
        mi[pair]["entropy_features"], batch["labels"], batch["weight"], entropy_memory[pair],
        config.mi_entropy_ridge, axis_name,
    )
  return entropy


def total_loss(
    outputs: Mapping[str, object],
    batch: Mapping[str, jax.Array],
    generated_labels: Mapping[str, jax.Array],
    config: ml_collections.ConfigDict,
    entropy_memory: Mapping[str, EntropyMemory] | None = None,
    axis_name: str | None = None,
    latent_dim: int | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Computes L = L_task + alpha L_m + beta L_avl + gamma L_dc + eta L_MI.

  A term is present only when the model output it needs is present: `kl["m"]`
  for L_m, any of `kl["t"|"a"|"v"]` for L_avl (their sum), the
  discriminator logits for L_dc and `mi` for L_MI.

  Args:
    outputs: the model outputs (`predictions`, and `kl`,
      `discriminator_logits`, `discriminator_targets`, `mi` when enabled).
    batch: the batch; `labels` (y_m) and `weight` are used.
    generated_labels: head -> [B] generated labels before this step's update.
    config: `config.loss`.
    entropy_memory: pair -> EntropyMemory, required when config.mi_entropy.
    axis_name: under pmap, the device axis: every term is then this device's
      share, and their psum over devices is the term of the global batch.

  Returns:
    (L, terms): terms has `task_<head>` for each head, `task`, and `kl_m`,
    `kl_avl`, `discriminator`, `mutual_information` when present,
    `mi_entropy` (the summed H(y), already inside `mutual_information`) when
    config.mi_entropy, and `total` = L. Terms are unscaled by alpha..eta.
  """
  if config.mi_entropy and "mi" in outputs and entropy_memory is None:
    raise ValueError(
        "config.loss.mi_entropy is True but total_loss got no entropy_memory; pass one "
        "init_entropy_memory(...) per pair in the train state, or set mi_entropy to False."
    )
  weight = batch["weight"]
  task, terms = task_loss(
      outputs["predictions"], batch["labels"], generated_labels, weight, config.task_normalization,
      axis_name,
  )
  terms["task"] = task
  total = task

  kl = outputs.get("kl", {})
  unknown = sorted(set(kl) - {"m", *UNIMODAL})
  if unknown:
    raise ValueError(f"outputs['kl'] has unknown keys {unknown}; expected a subset of m, t, a, v.")
  if kl and config.kl_reduction == "mean":
    if not latent_dim:
      raise ValueError("config.loss.kl_reduction is 'mean', so total_loss needs latent_dim (config.model.latent_dim).")
    kl = {name: values / latent_dim for name, values in kl.items()}
  elif kl and config.kl_reduction != "sum":
    raise ValueError(f"config.loss.kl_reduction must be 'sum' or 'mean', found {config.kl_reduction!r}.")
  if "m" in kl:
    terms["kl_m"] = kl_loss(kl["m"], weight, axis_name)
    total = total + config.alpha * terms["kl_m"]
  unimodal = [s for s in UNIMODAL if s in kl]
  if unimodal:
    terms["kl_avl"] = sum(kl_loss(kl[s], weight, axis_name) for s in unimodal)
    total = total + config.beta * terms["kl_avl"]

  if "discriminator_logits" in outputs:
    terms["discriminator"] = discriminator_loss(
        outputs["discriminator_logits"],
        outputs["discriminator_targets"],
        weight,
        config.discriminator_group_size,
        config.discriminator_layer_average,
        axis_name,
    )
    total = total + config.gamma * terms["discriminator"]

  if "mi" in outputs:
    entropy = None
    if config.mi_entropy:
      entropy = _entropy_terms(outputs["mi"], batch, config, entropy_memory, axis_name)
      terms["mi_entropy"] = sum(entropy.values())
    terms["mutual_information"] = mutual_information_loss(
        outputs["mi"], weight, config.mi_form, entropy, axis_name,
        detach_target=config.mi_detach_target, logvar_bound=config.mi_logvar_bound
    )
    total = total + config.eta * terms["mutual_information"]

  terms["total"] = total
  return total, terms
