"""Tests of checkpoint verification with real orbax checkpoints of a small state, and of the metrics log on resume.

A damaged checkpoint (a flipped bit, a truncated or missing file) must be
reported and skipped for the one before it, and moved out of the way so that
its step can be saved again. A checkpoint of other shapes must be rejected
without touching anything.
"""

import json
import logging
import os

import numpy as np
import pytest

from mcer_jax import checkpointing
from mcer_jax import run_outputs

PROGRESS = {
    "epoch": 2,
    "batches_done": 0,
    "best_value": 0.5,
    "best_step": 1,
    "epochs_without_improvement": 0,
    "accumulator": {"loss_sums": {"total": 1.25}, "steps": 4, "index": [3, 1], "prediction": [0.5, -0.25]},
}


def _state(seed: int) -> dict:
  # Random floats do not compress, so each byte of the data file is a byte of an array.
  rng = np.random.default_rng(seed)
  return {
      "params": {"kernel": rng.normal(size=(256, 256)).astype(np.float32), "bias": rng.normal(size=256).astype(np.float32)},
      "step": np.asarray(seed, np.int32),
  }


def _manager(workdir):
  return checkpointing.create_manager(str(workdir), "MAE", "min")


def _save_two(workdir):
  """Saves checkpoints 1 and 2 and returns their states."""
  manager = _manager(workdir)
  states = {step: _state(step) for step in (1, 2)}
  for step, state in states.items():
    checkpointing.save(manager, step, state, dict(PROGRESS, epoch=step + 1), {"MAE": 1.0 / step})
  return states


def _data_file(workdir, step: int) -> str:
  """The largest file of a checkpoint's state: the chunk file that contains the arrays."""
  folder = os.path.join(workdir, "checkpoints", str(step), "state")
  files = [os.path.join(root, name) for root, _, names in os.walk(folder) for name in names]
  return max(files, key=os.path.getsize)


def _assert_state(restored, expected):
  np.testing.assert_array_equal(restored["params"]["kernel"], expected["params"]["kernel"])
  np.testing.assert_array_equal(restored["params"]["bias"], expected["params"]["bias"])
  assert int(restored["step"]) == int(expected["step"])


def test_restore_latest_round_trip(tmp_path):
  states = _save_two(tmp_path)
  restored, progress = checkpointing.restore_latest(_manager(tmp_path), _state(0))
  _assert_state(restored, states[2])
  assert progress == dict(PROGRESS, epoch=3)


def test_flipped_bit_fails_checksum(tmp_path, caplog):
  states = _save_two(tmp_path)
  path = _data_file(tmp_path, 2)
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0x10
  with open(path, "wb") as stream:
    stream.write(data)

  manager = _manager(tmp_path)
  with caplog.at_level(logging.WARNING):
    restored, progress = checkpointing.restore_latest(manager, _state(0))
  _assert_state(restored, states[1])
  assert progress["epoch"] == 2
  checkpoint = os.path.join(str(tmp_path), "checkpoints", "2")
  assert f"checkpoint {checkpoint} does not match the checksum saved with it" in caplog.text
  assert manager.all_steps() == [1]
  moved = os.listdir(tmp_path / checkpointing.UNREADABLE_DIR)
  assert len(moved) == 1
  assert moved[0].startswith("2-")
  # The step of the moved checkpoint can be saved again.
  checkpointing.save(manager, 2, states[2], dict(PROGRESS, epoch=3))
  restored, _ = checkpointing.restore_latest(_manager(tmp_path), _state(0))
  _assert_state(restored, states[2])


@pytest.mark.parametrize("damage", ["truncate_data", "delete_data", "truncate_metadata", "garble_progress", "delete_progress"])
def test_damaged_file_falls_back(tmp_path, caplog, damage):
  states = _save_two(tmp_path)
  checkpoint = os.path.join(str(tmp_path), "checkpoints", "2")
  if damage == "truncate_data":
    path = _data_file(tmp_path, 2)
    os.truncate(path, os.path.getsize(path) // 2)
  elif damage == "delete_data":
    os.remove(_data_file(tmp_path, 2))
  elif damage == "truncate_metadata":
    path = os.path.join(checkpoint, "state", "_METADATA")
    os.truncate(path, os.path.getsize(path) // 2)
  elif damage == "garble_progress":
    with open(os.path.join(checkpoint, "progress", "metadata"), "r+b") as stream:
      stream.write(b"\xff\xfe{")
  else:
    os.remove(os.path.join(checkpoint, "progress", "metadata"))

  with caplog.at_level(logging.WARNING):
    restored, _ = checkpointing.restore_latest(_manager(tmp_path), _state(0))
  _assert_state(restored, states[1])
  assert f"checkpoint {checkpoint} is unreadable" in caplog.text
  assert "trying the checkpoint before it" in caplog.text
  assert not os.path.exists(checkpoint)


def test_all_damaged_returns_none(tmp_path, caplog):
  _save_two(tmp_path)
  for step in (1, 2):
    os.remove(_data_file(tmp_path, step))
  with caplog.at_level(logging.WARNING):
    assert checkpointing.restore_latest(_manager(tmp_path), _state(0)) is None
  assert caplog.text.count("is unreadable") == 2
  assert len(os.listdir(tmp_path / checkpointing.UNREADABLE_DIR)) == 2


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda state: state["params"].update(kernel=np.zeros((128, 256), np.float32)), "'params/kernel' with shape (256, 256), but this run's state has shape (128, 256)"),
        (lambda state: state["params"].update(extra=np.zeros(3, np.float32)), "has no array 'params/extra'"),
        (lambda state: state["params"].pop("bias"), "has an array 'params/bias' that this run's state lacks"),
        (lambda state: state["params"].update(bias=np.zeros(256, np.float64)), "'params/bias' as float32, but this run's state has float64"),
    ],
    ids=["shape", "extra_array", "missing_array", "dtype"],
)
def test_other_shapes_rejected(tmp_path, change, message):
  _save_two(tmp_path)
  abstract = _state(0)
  change(abstract)
  with pytest.raises(checkpointing.CheckpointMismatchError) as error:
    checkpointing.restore_latest(_manager(tmp_path), abstract)
  assert message in str(error.value)
  assert "Use a new --workdir" in str(error.value)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]
  assert not os.path.exists(tmp_path / checkpointing.UNREADABLE_DIR)


def test_missing_progress_key_is_unreadable(tmp_path, caplog):
  manager = _manager(tmp_path)
  checkpointing.save(manager, 1, _state(1), PROGRESS)
  incomplete = {key: value for key, value in PROGRESS.items() if key != "epoch"}
  checkpointing.save(manager, 2, _state(2), incomplete)
  with caplog.at_level(logging.WARNING):
    restored, _ = checkpointing.restore_latest(_manager(tmp_path), _state(0))
  _assert_state(restored, _state(1))
  assert "the progress record lacks ['epoch']" in caplog.text


def test_checkpoint_without_checksum_loads(tmp_path, caplog):
  manager = _manager(tmp_path)
  state = _state(1)
  manager.save(
      1,
      args=checkpointing.ocp.args.Composite(
          state=checkpointing.ocp.args.StandardSave(state), progress=checkpointing.ocp.args.JsonSave(PROGRESS)
      ),
  )
  manager.wait_until_finished()
  with caplog.at_level(logging.WARNING):
    restored, progress = checkpointing.restore_latest(_manager(tmp_path), _state(0))
  _assert_state(restored, state)
  assert progress == PROGRESS
  assert "has no checksum" in caplog.text


def test_checksum_covers_arrays_and_progress():
  state = _state(1)
  reference = checkpointing.checksum(state, PROGRESS)
  assert checkpointing.checksum(_state(1), dict(PROGRESS)) == reference
  flipped = _state(1)
  flipped["params"]["kernel"].view(np.uint32)[7, 9] ^= 1
  assert checkpointing.checksum(flipped, PROGRESS) != reference
  assert checkpointing.checksum(state, dict(PROGRESS, batches_done=1)) != reference
  renamed = {"params": {"weights": state["params"]["kernel"], "bias": state["params"]["bias"]}, "step": state["step"]}
  assert checkpointing.checksum(renamed, PROGRESS) != reference


def test_partial_metrics_line_dropped(tmp_path, caplog):
  # A run killed while appending to metrics.jsonl leaves a partial last line.
  rows = [{"epoch": 1, "valid/MAE": 0.9}, {"epoch": 2, "valid/MAE": 0.8}]
  text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
  (tmp_path / "metrics.jsonl").write_text(text + '{"epoch": 3, "valid/MA', encoding="utf-8")
  with caplog.at_level(logging.WARNING):
    run_outputs.truncate_metrics_log(str(tmp_path), 5)
  assert "line 3: dropped a partial last line" in caplog.text
  assert (tmp_path / "metrics.jsonl").read_text(encoding="utf-8") == text


def test_invalid_metrics_line_inside_rejected(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\nnot json\n{"epoch": 2}\n', encoding="utf-8")
  with pytest.raises(ValueError, match=r"metrics\.jsonl, line 2: invalid JSON"):
    run_outputs.read_metrics_log(str(tmp_path))


def test_best_checkpoint_survives_restart(tmp_path):
  # Validation MAE by step: step 1 is the best and must outlive the two latest.
  scores = {1: 0.5, 2: 0.9, 3: 0.8, 4: 0.7}
  manager = _manager(tmp_path)
  for step in (1, 2):
    checkpointing.save(manager, step, _state(step), dict(PROGRESS, epoch=step + 1), {"MAE": scores[step]})
  restarted = _manager(tmp_path)
  for step in (3, 4):
    checkpointing.save(restarted, step, _state(step), dict(PROGRESS, epoch=step + 1), {"MAE": scores[step]})
  assert restarted.all_steps() == [1, 3, 4]
  restored, _ = checkpointing.restore(_manager(tmp_path), 1, _state(0))
  _assert_state(restored, _state(1))
