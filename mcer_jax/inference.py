"""Evaluation and prediction with the best checkpoint of a finished or running run."""

import functools
import logging
import os
from typing import Any

import flax.traverse_util
import jax
import ml_collections
import numpy as np

from mcer_jax import checkpointing
from mcer_jax import run_outputs
from mcer_jax import train
from mcer_jax.models import mcer as mcer_model


def _best_params(config: ml_collections.ConfigDict, workdir: str, model: Any, example_batch: Any) -> tuple[Any, int]:
  """Restores the best checkpoint's parameters and checks them against `model`."""
  manager = checkpointing.create_manager(workdir, config.train.selection_metric, config.train.selection_mode)
  steps = manager.all_steps()
  if not steps:
    raise FileNotFoundError(f"{os.path.join(workdir, 'checkpoints')}: no checkpoint found; train first with --mode=train")
  latest = manager.restore(steps[-1], args=checkpointing.ocp.args.Composite(progress=checkpointing.ocp.args.JsonRestore()))
  best_step = latest.progress.get("best_step") or steps[-1]
  restored = manager.restore(best_step, args=checkpointing.ocp.args.Composite(state=checkpointing.ocp.args.StandardRestore()))
  # A run trained with config.train.ema_decay > 0 selected and tested its
  # moving average, so evaluation restores that average, whatever this config sets.
  average = restored.state.get("ema_params")
  if average:
    logging.info("Using the moving average of the parameters saved at step %d.", best_step)
    params = average
  else:
    params = restored.state["params"]
  expected = jax.eval_shape(lambda: mcer_model.init_params(model, jax.random.PRNGKey(0), example_batch, config, load_pretrained=False))
  found_flat = flax.traverse_util.flatten_dict(params)
  for path, spec in flax.traverse_util.flatten_dict(expected).items():
    name = "/".join(path)
    if path not in found_flat:
      raise ValueError(f"checkpoint step {best_step} in {workdir} has no parameter {name}; it was trained with another model config")
    if tuple(found_flat[path].shape) != tuple(spec.shape):
      raise ValueError(
          f"checkpoint step {best_step} in {workdir}: parameter {name} has shape {tuple(found_flat[path].shape)}, "
          f"but this data and config need {tuple(spec.shape)}; the feature sizes or the model settings differ"
      )
  return params, best_step


def _predict_split(config: ml_collections.ConfigDict, workdir: str, split: str) -> tuple[dict[str, np.ndarray], Any, int]:
  from mcer_jax import data as data_lib

  splits, info = data_lib.load_splits(config)
  if split not in splits or len(splits[split]) == 0:
    raise ValueError(f"split '{split}' is missing or empty in {config.data.manual_dir or config.data.name}; found {sorted(splits)}")
  model = mcer_model.build_model(config, info.feature_dims)
  example = train._example_batch(splits[split], config)
  params, best_step = _best_params(config, workdir, model, example)
  p_eval_step = jax.pmap(functools.partial(train.eval_step, apply_fn=model.apply), axis_name=train.AXIS)
  predicted = train.evaluate(p_eval_step, train.replicate(params), splits[split], config)
  return predicted, info, best_step


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str, split: str) -> dict[str, float]:
  """Evaluates the best checkpoint of `workdir` on `split`; writes `eval_<split>.json`."""
  predicted, _, best_step = _predict_split(config, workdir, split)
  scores = {name: float(value) for name, value in train.split_metrics(config, predicted["pred_m"], predicted["labels"]).items()}
  if run_outputs.is_writer():
    run_outputs.write_json(os.path.join(workdir, f"eval_{split}.json"), scores)
  logging.info("Checkpoint step %d on %s: %s", best_step, split, scores)
  return scores


def predict_workdir(config: ml_collections.ConfigDict, workdir: str, split: str) -> str:
  """Writes every head's prediction for `split` to `predictions_<split>.csv`."""
  predicted, info, _ = _predict_split(config, workdir, split)
  table = {"id": list(info.ids[split]), "label": predicted["labels"]}
  table.update({name: values for name, values in predicted.items() if name.startswith("pred_")})
  path = os.path.join(workdir, f"predictions_{split}.csv")
  if run_outputs.is_writer():
    run_outputs.write_predictions(path, {split: table})
  logging.info("Wrote %s", path)
  return path
