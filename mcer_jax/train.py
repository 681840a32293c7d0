"""Train state, the data-parallel train and eval steps, and the epoch loop.

Read top to bottom: `create_train_state`, `compute_gradients` and
`apply_gradients` (together `TrainStep`), `eval_step`, `evaluate`, then
`train_and_evaluate`, which the entry point calls. The steps are pure
functions of (state, batch) that `jax.pmap` runs on every local device.
Each device's loss is its share of the global mean, so gradients and loss
terms are summed across devices (`lax.psum`). The result therefore does not
depend on how many devices share a batch.
"""

import functools
import logging
import os
import signal
import time
from collections.abc import Iterator, Mapping
from typing import Any

import flax
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm import tqdm

from mcer_jax import checkpointing
from mcer_jax import labels
from mcer_jax import losses
from mcer_jax import metrics as metrics_lib
from mcer_jax import optim
from mcer_jax import run_outputs
from mcer_jax.data import pipeline
from mcer_jax.models import mcer as mcer_model

AXIS = "batch"


class NonFiniteLossError(FloatingPointError):
  """A loss term or gradient became NaN or infinite.

  Attributes:
    step: the step (1-based count of steps run) whose values were not finite.
    terms: every non-finite loss term of that step and its value.
    groups: every parameter group whose gradient was not finite in that step.
  """

  def __init__(self, message: str, step: int, terms: Mapping[str, float], groups: list[str]):
    super().__init__(message)
    self.step = step
    self.terms = dict(terms)
    self.groups = list(groups)


class TrainState(flax.struct.PyTreeNode):
  """Everything a step reads and writes: parameters, optimiser, label memories."""

  step: jax.Array
  params: Any
  opt_state: Any
  label_state: labels.LabelState
  rng: jax.Array
  # The moving average of `params` (config.train.ema_decay > 0), else None.
  ema_params: Any
  apply_fn: Any = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  config: ml_collections.FrozenConfigDict = flax.struct.field(pytree_node=False)  # Static under jit.


def create_train_state(
    config: ml_collections.ConfigDict,
    model: Any,
    example_batch: Mapping[str, np.ndarray],
    human_train_labels: np.ndarray,
) -> TrainState:
  """Initialises parameters (loading BERT when configured), Adam and label memories.

  Args:
    config: the run config.
    model: the `MCER` module.
    example_batch: one batch without the device axis, for shapes.
    human_train_labels: `y_m` of every training sample, [num_train].
  """
  decay = config.train.ema_decay
  if not 0.0 <= decay < 1.0:
    raise ValueError(f"config.train.ema_decay must be in [0, 1), found {decay!r}; 0 turns averaging off.")
  rng = jax.random.PRNGKey(config.seed)
  init_rng, state_rng = jax.random.split(rng)
  params = mcer_model.init_params(model, init_rng, example_batch, config)
  outputs = jax.eval_shape(
      lambda p: model.apply(
          {"params": p},
          example_batch,
          train=True,
          rngs={"dropout": init_rng, "sample": init_rng},
      ),
      params,
  )
  feature_dims = {name: spec.shape[-1] for name, spec in outputs["features"].items()}
  label_dtype = "float64" if config.model.dtype == "float64" else "float32"
  label_state = labels.init_label_state(human_train_labels, feature_dims, label_dtype)
  tx = optim.create_optimizer(config.optim, params, config.text_encoder.finetune)
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=tx.init(params),
      label_state=label_state,
      rng=state_rng,
      ema_params=jax.tree.map(jnp.copy, params) if decay > 0 else None,
      apply_fn=model.apply,
      tx=tx,
      config=ml_collections.FrozenConfigDict(config),
  )


def _all_finite(tree: Any) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def compute_gradients(
    state: TrainState,
    batch: Mapping[str, jax.Array],
) -> tuple[Any, dict[str, jax.Array], dict[str, jax.Array], jax.Array]:
  """Runs the forward and backward pass of one step; runs under pmap.

  Returns:
    (gradients summed over devices, every loss term summed over devices, the
    batch's features for label generation, the multimodal predictions [B]).
  """
  step_rng = jax.random.fold_in(state.rng, state.step)
  dropout_rng = jax.random.fold_in(jax.random.fold_in(step_rng, 1), jax.lax.axis_index(AXIS))
  # Sampling noise is drawn per sample from its index, so it does not depend on
  # which device a sample lands on.
  sample_rng = jax.random.fold_in(step_rng, 2)
  generated = labels.batch_labels(state.label_state, batch["index"])

  def loss_fn(params):
    outputs = state.apply_fn(
        {"params": params},
        batch,
        train=True,
        rngs={"dropout": dropout_rng, "sample": sample_rng},
    )
    total, terms = losses.total_loss(
        outputs, batch, generated, state.config.loss, axis_name=AXIS, latent_dim=state.config.model.latent_dim
    )
    return total, (terms, outputs)

  (_, (terms, outputs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  if jax.lax.axis_size(AXIS) > 1:
    # On one device the sum would only copy every gradient (25 ms a step for
    # a MiniLM text encoder on two CPU cores).
    grads = jax.lax.psum(grads, AXIS)
    terms = jax.lax.psum(terms, AXIS)
  features = jax.lax.stop_gradient(outputs["features"])
  return grads, terms, features, outputs["predictions"]["m"]


def apply_gradients(
    state: TrainState,
    grads: Any,
    terms: Mapping[str, jax.Array],
    features: Mapping[str, jax.Array],
    batch: Mapping[str, jax.Array],
    epoch: jax.Array,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """Applies Adam and the label-generation update of one step; runs under pmap.

  A step whose loss or gradient is not finite leaves the state unchanged; the
  returned `grad_finite_<group>` flags and loss terms let the host name it.
  """
  config = state.config
  groups = optim.param_groups(grads)
  grad_finite = {}
  for group in optim.GROUPS:
    leaves = [g for g, name in zip(jax.tree.leaves(grads), jax.tree.leaves(groups)) if name == group]
    if leaves:
      grad_finite[group] = _all_finite(leaves)
  finite = _all_finite(terms) & jnp.all(jnp.stack(list(grad_finite.values())))

  def update(state: TrainState) -> TrainState:
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    label_state = labels.update(
        state.label_state,
        features,
        batch["index"],
        batch["weight"],
        epoch,
        config.labels,
        label_range=config.data.label_range,
        axis_name=AXIS,
    )
    params = optax.apply_updates(state.params, updates)
    ema_params = state.ema_params
    if ema_params is not None:
      decay = config.train.ema_decay
      ema_params = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)
    return state.replace(
        params=params,
        opt_state=opt_state,
        label_state=label_state,
        ema_params=ema_params,
    )

  # lax.cond, not a jnp.where per leaf: XLA compiled the per-leaf select of
  # the demo model's 163 parameters in 26 s and this in 3 s.
  new_state = jax.lax.cond(finite, update, lambda state: state, state)
  new_state = new_state.replace(step=state.step + 1)
  step_metrics = dict(terms)
  step_metrics.update({f"grad_finite_{name}": flag for name, flag in grad_finite.items()})
  return new_state, step_metrics


class TrainStep:
  """One training step: `compute_gradients` then `apply_gradients`, each pmapped.

  The step is two compiled programs, not one, because XLA's compile time grows
  faster than the program. On two CPU cores the demo model's step took 117 s
  to compile as one program, and its two halves took 22 s together.
  """

  def __init__(self):
    self._gradients = jax.pmap(compute_gradients, axis_name=AXIS)
    self._apply = jax.pmap(apply_gradients, axis_name=AXIS, donate_argnums=(0,))

  def __call__(self, state: TrainState, batch: Mapping[str, Any], epoch: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
    """Returns the new replicated state and the step's metrics (with `prediction`)."""
    grads, terms, features, prediction = self._gradients(state, batch)
    state, step_metrics = self._apply(state, grads, terms, features, batch, epoch)
    step_metrics["prediction"] = prediction
    return state, step_metrics


def eval_params(state: TrainState) -> Any:
  """Returns the parameters to evaluate: the moving average when there is one."""
  return state.params if state.ema_params is None else state.ema_params


def eval_step(params: Any, batch: Mapping[str, jax.Array], *, apply_fn: Any) -> dict[str, jax.Array]:
  """Returns every head's prediction for this device's part of the batch."""
  outputs = apply_fn({"params": params}, batch, train=False)
  return dict(outputs["predictions"])


def replicate(tree: Any) -> Any:
  """Places one copy of `tree` on every local device (leading axis: devices)."""
  count = jax.local_device_count()
  stacked = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (count, *np.shape(x))), tree)
  return jax.pmap(lambda x: x, axis_name=AXIS)(stacked)


def unreplicate(tree: Any) -> Any:
  """Fetches the first local device's copy of a replicated tree to the host.

  It copies the device buffer and runs no program: `x[0]` would compile and
  run one over the local devices, and in a multi-process CPU run such a
  program run by process 0 alone (for its label history) hung the run.
  """
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)).reshape(x.shape[1:]), tree)


def _gather_processes(array: np.ndarray) -> np.ndarray:
  """Concatenates a per-process array over all JAX processes (rows in process order)."""
  if jax.process_count() == 1:
    return array
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(array, tiled=False)).reshape(-1, *array.shape[1:])


def evaluate(
    p_eval_step: Any,
    replicated_params: Any,
    source: Any,
    config: ml_collections.ConfigDict,
) -> dict[str, np.ndarray]:
  """Predicts every sample of a split once.

  Returns:
    `pred_<head>` arrays and `labels`, each [num_samples] in the split's order.
  """
  num_samples = len(source)
  collected: dict[str, list[np.ndarray]] = {}
  for batch in _batches(source, config, config.train.eval_batch_size, epoch=0, shuffle=False):
    predictions = jax.device_get(p_eval_step(replicated_params, batch))
    rows = {f"pred_{name}": value for name, value in predictions.items()}
    rows["index"] = batch["index"]
    rows["weight"] = batch["weight"]
    rows["labels"] = batch["labels"]
    for name, value in rows.items():
      collected.setdefault(name, []).append(_gather_processes(np.asarray(value).reshape(-1)))
  joined = {name: np.concatenate(parts) for name, parts in collected.items()}
  real = joined.pop("weight") > 0
  index = joined.pop("index")[real]
  result = {}
  for name, values in joined.items():
    ordered = np.zeros(num_samples, np.float64)
    ordered[index] = values[real]
    result[name] = ordered
  if np.bincount(index, minlength=num_samples).max(initial=0) != 1 or len(index) != num_samples:
    raise RuntimeError(f"evaluation visited {len(index)} samples of {num_samples}, not each once")
  return result


def _batches(
    source: Any,
    config: ml_collections.ConfigDict,
    batch_size: int,
    epoch: int,
    shuffle: bool,
    start_batch: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
  return pipeline.epoch_batches(
      source,
      batch_size=batch_size,
      seed=config.seed,
      epoch=epoch,
      shuffle=shuffle,
      start_batch=start_batch,
      num_devices=jax.local_device_count(),
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      text_buckets=tuple(config.data.text_buckets),
      length_pool=config.data.length_pool,
  )


def split_metrics(config: ml_collections.ConfigDict, predictions: np.ndarray, targets: np.ndarray) -> dict[str, float]:
  """The field's metrics for the dataset (CH-SIMS has its own)."""
  if config.data.name == "sims":
    return metrics_lib.sims_metrics(predictions, targets)
  return metrics_lib.regression_metrics(predictions, targets)


class _PreemptionFlag:
  """Records SIGTERM so the loop can save a checkpoint before exiting.

  With several JAX processes all of them must stop after the same step, or the
  others wait forever in the next collective. There the preemption sync manager
  that `jax.distributed.initialize` starts catches SIGTERM and agrees on that
  step through the coordinator, so no Python handler is installed.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    self._synchronized = jax.process_count() > 1

  def poll(self, step: int) -> None:
    """Sets `requested` once any process got SIGTERM, at the same `step` on every process."""
    if self._synchronized and not self.requested:
      from jax.experimental import multihost_utils

      self.requested = multihost_utils.reached_preemption_sync_point(step)

  def __enter__(self):
    if self._synchronized:
      if not jax.config.jax_enable_preemption_service:
        logging.warning("jax_enable_preemption_service is off: SIGTERM will stop this run without a checkpoint.")
        self._synchronized = False
      return self

    def handler(signum, frame):
      del frame
      logging.warning("Received signal %d: saving a checkpoint, then stopping.", signum)
      self.requested = True

    try:
      self._previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # Not the main thread: signals cannot be handled here.
      self._previous = None
    return self

  def __exit__(self, *exc_info):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class Preempted(RuntimeError):
  """The run stopped on SIGTERM after saving a checkpoint."""


def _check_finite(step_metrics: Mapping[str, np.ndarray], step: int) -> None:
  """Raises `NonFiniteLossError` naming every non-finite loss term and gradient group of a step."""
  terms = {}
  groups = []
  for name, value in step_metrics.items():
    if name == "prediction":
      continue
    if name.startswith("grad_finite_"):
      if not np.all(value):
        groups.append(name[len("grad_finite_"):])
    elif not np.all(np.isfinite(value)):
      terms[name] = float(np.ravel(value)[0])
  if not terms and not groups:
    return
  found = []
  if terms:
    found.append("loss terms " + ", ".join(f"'{name}' = {value}" for name, value in terms.items()))
  if groups:
    found.append("the gradient of the " + ", ".join(f"'{group}'" for group in groups) + " parameters")
  raise NonFiniteLossError(
      f"step {step}: not finite: {'; and '.join(found)}. The update of that step was skipped and no "
      "checkpoint is written after it. Check the input features, and lower the learning rate of those "
      "parameter groups or the weight of those loss terms.",
      step,
      terms,
      groups,
  )


def _shape_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  flat = {}
  for key in checkpointing.SHAPE_SETTINGS:
    value = config
    for part in key.split("."):
      value = value[part]
    if isinstance(value, ml_collections.ConfigDict):
      for name, item in value.to_dict().items():
        flat[f"{key}.{name}"] = item
    else:
      flat[key] = value
  return flat


def _check_resume_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Rejects resuming a run whose saved config differs in a shape setting."""
  import json

  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as stream:
    saved = ml_collections.ConfigDict(json.load(stream))
  saved_decay = saved.get("train", {}).get("ema_decay", 0.0)
  if saved_decay != config.train.ema_decay:
    raise ValueError(
        f"{path}: the run in this work directory used train.ema_decay={saved_decay!r}, but this "
        f"config has {config.train.ema_decay!r}. Resume with --config.train.ema_decay={saved_decay!r}, "
        "or use a new --workdir.")
  previous = _shape_settings(saved)
  current = _shape_settings(config)
  for key in sorted(set(previous) | set(current)):
    old, new = previous.get(key), current.get(key)
    if isinstance(old, (list, tuple)) or isinstance(new, (list, tuple)):
      old, new = list(old or []), list(new or [])
    if old != new:
      raise ValueError(
          f"{path}: the run in this work directory used {key}={old!r}, but this config has "
          f"{key}={new!r}, which changes the model. Use a new --workdir, or set it back."
      )


def _example_batch(source: Any, config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """The first training batch without the device axis, for shapes."""
  batch = next(_batches(source, config, config.train.batch_size, epoch=1, shuffle=False))
  return jax.tree.map(lambda x: x[0], batch)


def _epoch_log_line(
    epoch: int, step: int, train_losses: Mapping[str, float], train_scores: Mapping[str, float],
    valid_scores: Mapping[str, float],
) -> dict[str, Any]:
  row: dict[str, Any] = {"epoch": epoch, "step": step}
  row.update({f"train/loss/{name}": value for name, value in train_losses.items()})
  row.update({f"train/{name}": value for name, value in train_scores.items()})
  row.update({f"valid/{name}": value for name, value in valid_scores.items()})
  return row


def _worst_score(mode: str) -> float:
  largest = float(np.finfo(np.float32).max)
  return largest if mode == "min" else -largest


def _selection_start(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """Returns the first step whose epoch may be selected, at most the run's last step."""
  if config.train.selection_mode not in ("min", "max"):
    raise ValueError(f"config.train.selection_mode must be 'min' or 'max', found {config.train.selection_mode!r}")
  start, total = config.train.selection_start_step, config.train.num_epochs * steps_per_epoch
  if start < 0:
    raise ValueError(f"config.train.selection_start_step must be 0 or more, found {start}")
  if start > total:
    logging.warning(
        "config.train.selection_start_step=%d is after the last step of this run (%d epochs of %d steps end at "
        "step %d), so only the last epoch can be selected.", start, config.train.num_epochs, steps_per_epoch, total,
    )
    return total
  return start


def _improved(value: float, best: float | None, mode: str) -> bool:
  if best is None:
    return True
  return value < best if mode == "min" else value > best


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains with validation each epoch, resumes from `workdir`, and tests the best checkpoint.

  Returns:
    The test metrics of the best checkpoint (also written to `results.json`).
  """
  from mcer_jax import data as data_lib

  os.makedirs(workdir, exist_ok=True)
  _check_resume_config(workdir, config)
  results_path = os.path.join(workdir, "results.json")
  if os.path.exists(results_path):
    import json

    logging.info("%s exists: this run already finished; nothing to do. Use a new --workdir to train again.", results_path)
    with open(results_path, encoding="utf-8") as stream:
      return json.load(stream)

  splits, info = data_lib.load_splits(config)
  for split in ("train", "valid", "test"):
    if split not in splits or len(splits[split]) == 0:
      raise ValueError(f"the {split} split of {config.data.manual_dir or config.data.name} is missing or empty")

  model = mcer_model.build_model(config, info.feature_dims)
  train_source = splits["train"]
  human_train = np.asarray([float(train_source[i]["labels"]) for i in range(len(train_source))], np.float32)
  state = create_train_state(config, model, _example_batch(train_source, config), human_train)
  steps_per_epoch = pipeline.num_batches(len(train_source), config.train.batch_size)
  selection_start = _selection_start(config, steps_per_epoch)

  manager = checkpointing.create_manager(workdir, config.train.selection_metric, config.train.selection_mode)
  progress = {
      "epoch": 1,
      "batches_done": 0,
      "best_value": None,
      "best_step": None,
      "epochs_without_improvement": 0,
      "accumulator": None,
  }
  restored = checkpointing.restore_latest(manager, jax.device_get(state))
  if restored is not None:
    host_state, progress = restored
    fields = ("step", "params", "opt_state", "label_state", "rng", "ema_params")
    state = state.replace(**{field: getattr(host_state, field) for field in fields})
    logging.info("Resumed from step %d (epoch %d, batch %d).", int(state.step), progress["epoch"], progress["batches_done"])
    if run_outputs.is_writer():
      run_outputs.truncate_metrics_log(workdir, progress["epoch"] - 1)
  # Written only now, so a resume rejected above leaves the saved config.json as it was.
  if run_outputs.is_writer():
    run_outputs.write_config(workdir, config)

  p_train_step = TrainStep()
  p_eval_step = jax.pmap(functools.partial(eval_step, apply_fn=model.apply), axis_name=AXIS)
  replicated = replicate(state)
  tensorboard = run_outputs.TensorBoard(workdir)
  metric, mode = config.train.selection_metric, config.train.selection_mode

  def save(progress_now, scores=None):
    checkpointing.save(manager, int(unreplicate(replicated.step)), unreplicate(replicated), progress_now, scores)

  logging.info("Initial compilation, this might take some minutes...")
  with _PreemptionFlag() as preemption:
    epoch = progress["epoch"]
    while epoch <= config.train.num_epochs:
      accumulator = progress["accumulator"] or {"loss_sums": {}, "steps": 0, "index": [], "prediction": []}
      start = progress["batches_done"]
      epoch_array = replicate(jnp.asarray(epoch, jnp.int32))
      bar = tqdm(
          total=steps_per_epoch,
          initial=start,
          desc=f"epoch {epoch}/{config.train.num_epochs}",
          disable=not run_outputs.is_writer(),
          leave=False,
      )
      pending = []
      batches = _batches(train_source, config, config.train.batch_size, epoch=epoch, shuffle=True, start_batch=start)
      for batch_number, batch in enumerate(batches, start=start + 1):
        started = time.perf_counter()
        replicated, step_metrics = p_train_step(replicated, batch, epoch_array)
        preemption.poll((epoch - 1) * steps_per_epoch + batch_number)
        pending.append((step_metrics, batch["index"], batch["weight"]))
        if len(pending) >= config.train.log_every_steps or batch_number == steps_per_epoch or preemption.requested:
          _drain(pending, accumulator, int(unreplicate(replicated.step)))
          pending = []
        bar.update(1)
        if batch_number == 1 and epoch == 1:
          logging.info("First step done in %.1f s.", time.perf_counter() - started)
        if preemption.requested and batch_number < steps_per_epoch:
          _drain(pending, accumulator, int(unreplicate(replicated.step)))
          save(dict(progress, batches_done=batch_number, accumulator=accumulator))
          raise Preempted(f"stopped by SIGTERM at epoch {epoch}, batch {batch_number}; run again to resume")
      bar.close()

      train_losses = {name: total / max(accumulator["steps"], 1) for name, total in accumulator["loss_sums"].items()}
      train_index = np.asarray(accumulator["index"], np.int64)
      train_scores = split_metrics(config, np.asarray(accumulator["prediction"]), human_train[train_index])
      valid = evaluate(p_eval_step, eval_params(replicated), splits["valid"], config)
      valid_scores = split_metrics(config, valid["pred_m"], valid["labels"])

      progress = dict(progress, epoch=epoch + 1, batches_done=0, accumulator=None)
      value = valid_scores[metric]
      step = int(unreplicate(replicated.step))
      candidate = step >= selection_start
      if candidate and _improved(value, progress["best_value"], mode):
        progress.update(best_value=value, best_step=step, epochs_without_improvement=0)
      elif candidate:
        progress["epochs_without_improvement"] += 1
      row = _epoch_log_line(epoch, step, train_losses, train_scores, valid_scores)
      if run_outputs.is_writer():
        run_outputs.append_metrics_log(workdir, row)
        tensorboard.scalars(epoch, {k: v for k, v in row.items() if k not in ("epoch", "step")})
        if config.train.save_label_history:
          run_outputs.save_label_history(workdir, epoch, labels.generated_labels(unreplicate(replicated.label_state)))
      # The checkpoint manager keeps the best saved score, so an epoch before
      # the selection start is saved with the worst finite one.
      save(progress, {metric: value if candidate else _worst_score(mode)})
      if candidate:
        logging.info(
            "epoch %d: train loss %.4f, valid %s %.4f (best %.4f at step %d)",
            epoch, train_losses.get("total", float("nan")), metric, value, progress["best_value"], progress["best_step"],
        )
      else:
        logging.info(
            "epoch %d: train loss %.4f, valid %s %.4f (selection starts at step %d; this is step %d)",
            epoch, train_losses.get("total", float("nan")), metric, value, selection_start, step,
        )
      patience = config.train.early_stop_patience
      if patience and progress["epochs_without_improvement"] >= patience:
        logging.info("No improvement in %d epochs: stopping early.", patience)
        break
      if preemption.requested:
        raise Preempted(f"stopped by SIGTERM after epoch {epoch}; run again to resume")
      epoch += 1

  tensorboard.close()
  return _test_best(config, workdir, manager, progress, state, p_eval_step, splits, info)


def _drain(pending: list, accumulator: dict[str, Any], step: int) -> None:
  """Moves finished steps' metrics to the host, checks them and adds them up.

  `step` is the number of the last pending step, so the first one is
  `step - len(pending) + 1`.
  """
  first_step = step - len(pending) + 1
  for offset, (step_metrics, index, weight) in enumerate(jax.device_get(pending)):
    first_device = {name: np.asarray(value)[0] for name, value in step_metrics.items() if name != "prediction"}
    _check_finite(first_device, first_step + offset)
    for name, value in first_device.items():
      if not name.startswith("grad_finite_"):
        accumulator["loss_sums"][name] = accumulator["loss_sums"].get(name, 0.0) + float(value)
    accumulator["steps"] += 1
    # Rows of all processes, so the train metrics and the saved accumulator are
    # those of the global batch and the same on every process.
    real = _gather_processes(np.asarray(weight).reshape(-1)) > 0
    accumulator["index"].extend(_gather_processes(np.asarray(index).reshape(-1))[real].tolist())
    accumulator["prediction"].extend(_gather_processes(np.asarray(step_metrics["prediction"]).reshape(-1))[real].tolist())


def _test_best(config, workdir, manager, progress, state, p_eval_step, splits, info) -> dict[str, float]:
  """Restores the best checkpoint, writes `results.json` and `predictions.csv`."""
  best_step = progress["best_step"]
  host_state, _ = checkpointing.restore(manager, best_step, jax.device_get(state))
  replicated_params = replicate(eval_params(host_state))
  tables = {}
  results: dict[str, Any] = {}
  for split in ("train", "valid", "test"):
    predicted = evaluate(p_eval_step, replicated_params, splits[split], config)
    table: dict[str, Any] = {"id": list(info.ids[split]), "label": predicted["labels"]}
    table.update({name: values for name, values in predicted.items() if name.startswith("pred_")})
    if split == "train":
      generated = labels.generated_labels(host_state.label_state)
      table.update({f"generated_{name}": values for name, values in generated.items()})
    tables[split] = table
    if split == "test":
      results = split_metrics(config, predicted["pred_m"], predicted["labels"])
  results = {name: float(value) for name, value in results.items()}
  if run_outputs.is_writer():
    run_outputs.write_predictions(os.path.join(workdir, "predictions.csv"), tables)
    run_outputs.write_json(os.path.join(workdir, "results.json"), results)
  logging.info("Test metrics of the best checkpoint (step %d): %s", best_step, results)
  return results
