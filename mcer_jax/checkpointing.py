"""Orbax checkpoints of a run: the latest for resuming, the best for testing.

One `CheckpointManager` under `WORKDIR/checkpoints` keeps the two newest
checkpoints and the one with the best validation metric. Each checkpoint holds
the whole train state (parameters, optimiser state, label memories, rng, step)
and a small JSON record of where the loop stood (epoch, batches done in that
epoch, early-stopping counters), so a resumed run continues exactly.

The JSON record also stores a SHA-256 checksum of the state's arrays and of the
record itself. orbax's compressed chunks catch truncation, but a flipped bit
inside an array restores silently, so `restore` verifies the checksum.
"""

import hashlib
import json
import logging
import os
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers
from orbax.checkpoint import tree as ocp_tree

# Settings that change parameter shapes or the meaning of the label memories;
# a resume with any of them changed is rejected.
SHAPE_SETTINGS = (
    "data.name",
    "data.layout",
    "data.label_range",
    "text_encoder.checkpoint",
    "text_encoder.random_init",
    "model",
)


# The key of the checksum inside the saved progress record.
CHECKSUM_KEY = "checksum"
# Unreadable checkpoints are moved here, beside `checkpoints`, not deleted.
UNREADABLE_DIR = "checkpoints_unreadable"
# Keys the training loop reads from a restored progress record.
PROGRESS_KEYS = ("epoch", "batches_done", "best_value", "best_step", "epochs_without_improvement", "accumulator")


class CheckpointError(RuntimeError):
  """A checkpoint directory that cannot be used."""


class CheckpointMismatchError(CheckpointError):
  """A readable checkpoint whose arrays have other names or shapes than this run's state."""


def _selection_value(metrics: dict[str, float], metric: str, mode: str) -> float:
  value = metrics[metric]
  return -value if mode == "min" else value


def create_manager(workdir: str, metric: str, mode: str) -> ocp.CheckpointManager:
  """Opens (or creates) the checkpoint manager of a run directory."""
  policy = checkpoint_managers.AnyPreservationPolicy(
      policies=[
          checkpoint_managers.LatestN(n=2),
          checkpoint_managers.BestN(
              get_metric_fn=lambda metrics: _selection_value(metrics, metric, mode),
              # BestN keeps the largest value, so _selection_value negates "min" metrics.
              reverse=False,
              n=1,
              keep_checkpoints_without_metrics=False,
          ),
      ]
  )
  # orbax (0.12.8) writes the metrics of a checkpoint to disk only when
  # best_fn is set. Without them a restarted run's BestN treats old checkpoints
  # as having no metric and deletes the best one at the next save.
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policy,
      best_fn=lambda metrics: metrics[metric],
      best_mode=mode,
      enable_async_checkpointing=False,
      create=True,
  )
  # Handlers, not just item names, so that `item_metadata` can read the saved
  # shapes before a restore.
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
      item_handlers={"state": ocp.StandardCheckpointHandler(), "progress": ocp.JsonCheckpointHandler()},
      options=options,
  )


def checksum(state: Any, progress: dict[str, Any]) -> str:
  """Computes the SHA-256 of every array of `state` (name, dtype, shape, bytes) and of `progress`."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    array = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f"{jax.tree_util.keystr(path)}:{array.dtype.str}:{array.shape}\n".encode())
    digest.update(array.data if array.size else b"")
  record = {key: value for key, value in progress.items() if key != CHECKSUM_KEY}
  digest.update(json.dumps(record, sort_keys=True).encode())
  return digest.hexdigest()


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state: Any,
    progress: dict[str, Any],
    metrics: dict[str, float] | None = None,
) -> None:
  """Writes one checkpoint with its checksum and waits until it is complete on disk."""
  record = dict(progress)
  record[CHECKSUM_KEY] = checksum(state, progress)
  manager.save(
      step,
      args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          progress=ocp.args.JsonSave(record),
      ),
      metrics=metrics,
      force=True,
  )
  manager.wait_until_finished()


def restore_latest(
    manager: ocp.CheckpointManager, abstract_state: Any
) -> tuple[Any, dict[str, Any]] | None:
  """Restores the newest readable checkpoint, or returns None if there is none.

  A checkpoint that fails to restore or to verify (a partial write or a
  damaged file) is logged, moved to `checkpoints_unreadable` beside the
  checkpoint folder, and the one before it is tried. Moving it keeps the files
  for inspection and frees its step number, which the resumed run saves again.

  Raises:
    CheckpointMismatchError: a readable checkpoint was written for other
      shapes (another model config or other data); nothing is moved.
  """
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return restore(manager, step, abstract_state)
    except CheckpointMismatchError:
      raise
    except CheckpointError as error:
      moved = _move_unreadable(manager, step)
      logging.warning("%s. Moved it to %s; trying the checkpoint before it.", error, moved)
  return None


def restore(
    manager: ocp.CheckpointManager, step: int, abstract_state: Any
) -> tuple[Any, dict[str, Any]]:
  """Restores the checkpoint of `step` onto the shapes of `abstract_state` and verifies its checksum.

  Raises:
    CheckpointMismatchError: the saved arrays have other names or shapes.
    CheckpointError: the checkpoint is unreadable or fails its checksum.
  """
  path = os.path.join(str(manager.directory), str(step))
  _check_shapes(manager, step, abstract_state, path)
  try:
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            progress=ocp.args.JsonRestore(),
        ),
    )
  except (ValueError, KeyError, OSError, TypeError) as error:
    raise CheckpointError(f"checkpoint {path} is unreadable ({type(error).__name__}: {error})") from error
  progress = dict(restored.progress or {})
  expected = progress.pop(CHECKSUM_KEY, None)
  if expected is None:
    logging.warning("checkpoint %s has no checksum (written by an older version); it cannot be verified.", path)
  elif checksum(restored.state, progress) != expected:
    raise CheckpointError(
        f"checkpoint {path} does not match the checksum saved with it, so its files were changed or damaged "
        "after they were written"
    )
  missing = [key for key in PROGRESS_KEYS if key not in progress]
  if missing:
    raise CheckpointError(f"checkpoint {path}: the progress record lacks {missing}. Found {sorted(progress)}.")
  return restored.state, progress



def _check_shapes(manager: ocp.CheckpointManager, step: int, abstract_state: Any, path: str) -> None:
  """Compares the array names, shapes and dtypes saved for `step` with `abstract_state`."""
  try:
    metadata = manager.item_metadata(step)["state"]
  except (ValueError, KeyError, OSError, TypeError, AttributeError) as error:
    raise CheckpointError(f"checkpoint {path} is unreadable: its metadata cannot be read ({type(error).__name__}: {error})") from error
  if metadata is None:
    raise CheckpointError(f"checkpoint {path} is unreadable: it has no metadata for the train state")
  if hasattr(abstract_state, "ema_params") and hasattr(metadata, "keys") and "ema_params" not in metadata:
    raise CheckpointMismatchError(
        f"checkpoint {path} was written by an mcer_jax older than the parameter average "
        "(config.train.ema_decay), whose train state had no ema_params field, so this version cannot "
        "resume it. Its files are left in place: finish the run with the mcer_jax that started it, or "
        "use a new --workdir.")
  saved = ocp_tree.to_flat_dict(metadata, sep="/")
  expected = ocp_tree.to_flat_dict(ocp_tree.serialize_tree(abstract_state, keep_empty_nodes=True), sep="/")
  advice = (
      "The model config or the data (feature sizes, number of training samples) differs from the run that "
      "wrote it. Use a new --workdir, or the config and data of that run."
  )
  for name in sorted(set(saved) | set(expected)):
    if name not in saved:
      raise CheckpointMismatchError(f"checkpoint {path} has no array '{name}', which this run's state has. {advice}")
    if name not in expected:
      raise CheckpointMismatchError(f"checkpoint {path} has an array '{name}' that this run's state lacks. {advice}")
    saved_shape = tuple(getattr(saved[name], "shape", ()) or ())
    expected_shape = tuple(np.shape(expected[name]))
    if saved_shape != expected_shape:
      raise CheckpointMismatchError(
          f"checkpoint {path} stores '{name}' with shape {saved_shape}, but this run's state has shape "
          f"{expected_shape}. {advice}"
      )
    saved_dtype = getattr(saved[name], "dtype", None)
    expected_dtype = np.asarray(expected[name]).dtype
    if saved_dtype is not None and np.dtype(saved_dtype) != expected_dtype:
      raise CheckpointMismatchError(
          f"checkpoint {path} stores '{name}' as {np.dtype(saved_dtype)}, but this run's state has {expected_dtype}. {advice}"
      )


def _move_unreadable(manager: ocp.CheckpointManager, step: int) -> str:
  """Moves the folder of `step` to `checkpoints_unreadable` and returns its new path."""
  source = os.path.join(str(manager.directory), str(step))
  target_dir = os.path.join(os.path.dirname(str(manager.directory).rstrip("/")), UNREADABLE_DIR)
  os.makedirs(target_dir, exist_ok=True)
  target = os.path.join(target_dir, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
  try:
    os.replace(source, target)
  except FileNotFoundError:  # Another process of a multi-host run moved it first.
    pass
  manager.reload()
  return target
