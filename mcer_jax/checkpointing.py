"""Orbax checkpoints of a run: the latest for resuming, the best for testing.

One `CheckpointManager` under `WORKDIR/checkpoints` keeps the two newest
checkpoints and the one with the best validation metric. Each checkpoint holds
the whole train state (parameters, optimiser state, label memories, rng, step)
and a small JSON record of where the loop stood (epoch, batches done in that
epoch, early-stopping counters), so a resumed run continues exactly.
"""

import logging
import os
from typing import Any

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

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


class CheckpointError(RuntimeError):
  """A checkpoint directory that cannot be used."""


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
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policy,
      enable_async_checkpointing=False,
      create=True,
  )
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
      item_names=("state", "progress"),
      options=options,
  )


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state: Any,
    progress: dict[str, Any],
    metrics: dict[str, float] | None = None,
) -> None:
  """Writes one checkpoint and waits until it is complete on disk."""
  manager.save(
      step,
      args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          progress=ocp.args.JsonSave(progress),
      ),
      metrics=metrics,
      force=True,
  )
  manager.wait_until_finished()


def restore_latest(
    manager: ocp.CheckpointManager, abstract_state: Any
) -> tuple[Any, dict[str, Any]] | None:
  """Restores the newest readable checkpoint, or returns None if there is none.

  A checkpoint that fails to restore (a partial write or a corrupt file) is
  reported and skipped in favour of the one before it.
  """
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return restore(manager, step, abstract_state)
    except CheckpointError as error:
      logging.warning("%s; trying the previous checkpoint.", error)
  return None


def restore(
    manager: ocp.CheckpointManager, step: int, abstract_state: Any
) -> tuple[Any, dict[str, Any]]:
  """Restores the checkpoint of `step` onto the shapes of `abstract_state`."""
  try:
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            progress=ocp.args.JsonRestore(),
        ),
    )
  except (ValueError, KeyError, OSError, TypeError) as error:
    path = os.path.join(str(manager.directory), str(step))
    raise CheckpointError(
        f"checkpoint {path} is unreadable or does not match this model "
        f"({type(error).__name__}: {error})"
    ) from error
  return restored.state, restored.progress
