"""Interrupted, damaged and misconfigured demo runs: a resume loses nothing and nothing is overwritten.

One reference run trains the demo (128 synthetic samples, 3 epochs of 4
steps) without interruption. A second run in another work directory is then
stopped again and again, each time restarted with the same command:

  1. SIGTERM during the first step: it saves a checkpoint mid-epoch and exits
     with code 143.
  2. SIGKILL while checkpoint 4 (the end of epoch 1) is being written.
  3. SIGKILL at a random moment after checkpoint 4 and before checkpoint 8 is
     written (MCER_KILL_SEED picks the moment; it is in every failure message).
  4. SIGKILL while checkpoint 12 is being written.
  5. A file of checkpoint 8 is truncated, then the run resumes from checkpoint
     4 and finishes.

Its results, predictions, metrics log and label history must equal the
reference run's exactly. Copies of the work directory after step 4 check that
a resume with other shapes is rejected, and that a step with a non-finite loss
is reported without changing the checkpoints.

All runs are subprocesses of `python -m mcer_jax.main` sharing one JAX
compilation cache, so only the reference run compiles.
"""

import filecmp
import glob
import hashlib
import importlib.util
import json
import logging
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mcer_jax import checkpointing
from mcer_jax import train

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]
DEMO = REPO / "experiments" / "demo.py"
SMALL = ["--config.data.num_synthetic=128", "--config.train.num_epochs=3"]
KILL_SEED = int(os.environ.get("MCER_KILL_SEED", "0"))
RUN_TIMEOUT_SECONDS = 600
# Output files a finished run writes; all must match the reference run's.
OUTPUT_FILES = ("results.json", "predictions.csv", "metrics.jsonl")


class Run:
  """One `python -m mcer_jax.main` subprocess on the small demo, with its log in a file."""

  def __init__(self, workdir: pathlib.Path, cache: pathlib.Path, name: str, *overrides: str):
    self.workdir = workdir
    self.log_path = workdir.parent / f"{workdir.name}.{name}.log"
    env = dict(os.environ)
    env.update(
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    command = [sys.executable, "-m", "mcer_jax.main", "--config", str(DEMO), "--workdir", str(workdir), *SMALL, *overrides]
    self._log = open(self.log_path, "w", encoding="utf-8")
    self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)
    self.started = time.monotonic()

  def log(self) -> str:
    return self.log_path.read_text(encoding="utf-8", errors="replace")

  def wait_until(self, condition, description: str, poll_seconds: float = 0.002) -> None:
    """Polls `condition()` until it is true; fails if the run ends or times out first."""
    while not condition():
      if self.process.poll() is not None:
        pytest.fail(f"the run ended (code {self.process.returncode}) before {description}:\n{self.log()[-3000:]}")
      if time.monotonic() - self.started > RUN_TIMEOUT_SECONDS:
        self.process.kill()
        pytest.fail(f"timed out waiting until {description}")
      time.sleep(poll_seconds)

  def signal(self, signum: int) -> None:
    self.process.send_signal(signum)

  def wait(self) -> int:
    try:
      code = self.process.wait(timeout=RUN_TIMEOUT_SECONDS)
    finally:
      self._log.close()
    return code


def _checkpoint_writing(workdir, step: int):
  return lambda: bool(glob.glob(str(workdir / "checkpoints" / f"{step}.orbax-checkpoint-tmp*")))


def _checkpoint_done(workdir, step: int):
  return lambda: (workdir / "checkpoints" / str(step) / "_CHECKPOINT_METADATA").exists()


def _steps(workdir) -> list[int]:
  return sorted(int(name) for name in os.listdir(workdir / "checkpoints") if name.isdigit())


def _progress(workdir, step: int) -> dict:
  with open(workdir / "checkpoints" / str(step) / "progress" / "metadata", encoding="utf-8") as stream:
    return json.load(stream)


def _tree_digest(folder) -> dict[str, str]:
  """SHA-256 of every file under `folder`, by relative path."""
  digests = {}
  for root, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as stream:
        digests[os.path.relpath(path, folder)] = hashlib.sha256(stream.read()).hexdigest()
  return digests


def _demo_config(**changes):
  spec = importlib.util.spec_from_file_location("demo_config", DEMO)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.data.num_synthetic = 128
  config.train.num_epochs = 3
  for key, value in changes.items():
    section, name = key.rsplit(".", 1)
    target = config
    for part in section.split("."):
      target = target[part]
    target[name] = value
  return config


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache):
  """The work directory of an uninterrupted run."""
  workdir = tmp_path_factory.mktemp("reference") / "run"
  run = Run(workdir, cache, "full")
  assert run.wait() == 0, run.log()[-4000:]
  return workdir


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, cache, reference):
  """Runs the interruption sequence of the module docstring; returns what each stage observed."""
  del reference  # Runs first, so the compilation cache is full.
  root = tmp_path_factory.mktemp("interrupted")
  workdir = root / "run"
  seen = {"workdir": workdir}

  # 1. SIGTERM while the first step traces and compiles.
  run = Run(workdir, cache, "sigterm")
  run.wait_until(lambda: "Initial compilation" in run.log(), "the training loop started")
  time.sleep(0.5)
  run.signal(signal.SIGTERM)
  seen["sigterm_code"] = run.wait()
  seen["sigterm_log"] = run.log()
  seen["sigterm_steps"] = _steps(workdir)
  seen["sigterm_progress"] = _progress(workdir, seen["sigterm_steps"][-1]) if seen["sigterm_steps"] else None

  # 2. SIGKILL while checkpoint 4 is being written.
  run = Run(workdir, cache, "kill_writing_4")
  run.wait_until(_checkpoint_writing(workdir, 4), "checkpoint 4 was being written")
  run.signal(signal.SIGKILL)
  run.wait()
  seen["resume_after_sigterm_log"] = run.log()
  seen["steps_after_kill_writing_4"] = _steps(workdir)

  # 3. SIGKILL at a random moment between checkpoint 4 and the writing of checkpoint 8.
  delay = random.Random(KILL_SEED).uniform(0.0, 1.5)
  seen["random_delay"] = delay
  run = Run(workdir, cache, "kill_random")
  run.wait_until(_checkpoint_done(workdir, 4), "checkpoint 4 was written", poll_seconds=0.01)
  deadline = time.monotonic() + delay
  writing_8 = _checkpoint_writing(workdir, 8)
  while time.monotonic() < deadline and not writing_8() and run.process.poll() is None:
    time.sleep(0.002)
  run.signal(signal.SIGKILL)
  run.wait()

  # 4. SIGKILL while checkpoint 12 is being written.
  run = Run(workdir, cache, "kill_writing_12")
  run.wait_until(_checkpoint_writing(workdir, 12), "checkpoint 12 was being written")
  run.signal(signal.SIGKILL)
  run.wait()
  seen["steps_after_kill_writing_12"] = _steps(workdir)
  snapshot = root / "after_kills"
  shutil.copytree(workdir, snapshot)
  seen["snapshot"] = snapshot

  # 5. Damage checkpoint 8, then run to the end; two runs on copies start alongside.
  data_files = glob.glob(str(workdir / "checkpoints" / "8" / "state" / "**" / "d" / "*"), recursive=True)
  damaged = max(data_files, key=os.path.getsize)
  os.truncate(damaged, os.path.getsize(damaged) // 2)
  nan_dir, shapes_dir = root / "nan", root / "shapes"
  shutil.copytree(snapshot, nan_dir)
  shutil.copytree(snapshot, shapes_dir)
  final = Run(workdir, cache, "final")
  nan_run = Run(nan_dir, cache, "nan", "--config.optim.lr_audio=1e30")
  shapes_run = Run(shapes_dir, cache, "shapes", "--config.data.num_synthetic=160")
  seen["final_code"] = final.wait()
  seen["final_log"] = final.log()
  seen["nan"] = (nan_dir, nan_run.wait(), nan_run.log())
  seen["shapes"] = (shapes_dir, shapes_run.wait(), shapes_run.log())
  return seen


def _context(seen) -> str:
  return f"MCER_KILL_SEED={KILL_SEED}, random kill {seen['random_delay']:.3f} s after checkpoint 4"


def test_sigterm_saves_then_exits_143(interrupted):
  assert interrupted["sigterm_code"] == 143, interrupted["sigterm_log"][-3000:]
  assert "stopped by SIGTERM at epoch 1, batch 1; run again to resume" in interrupted["sigterm_log"]
  assert interrupted["sigterm_steps"] == [1]
  progress = interrupted["sigterm_progress"]
  assert progress["epoch"] == 1
  assert progress["batches_done"] == 1
  assert progress["accumulator"]["steps"] == 1


def test_resume_after_sigterm_logged(interrupted):
  assert "Resumed from step 1 (epoch 1, batch 1)." in interrupted["resume_after_sigterm_log"]


def test_kill_while_writing_leaves_no_step(interrupted):
  # The killed write of checkpoint 4 left only a temporary folder, which is not a checkpoint.
  assert interrupted["steps_after_kill_writing_4"] == [1]
  assert interrupted["steps_after_kill_writing_12"] == [4, 8], _context(interrupted)
  assert glob.glob(str(interrupted["snapshot"] / "checkpoints" / "12.orbax-checkpoint-tmp*"))


def test_damaged_checkpoint_skipped(interrupted):
  log = interrupted["final_log"]
  assert interrupted["final_code"] == 0, log[-4000:]
  checkpoint = interrupted["workdir"] / "checkpoints" / "8"
  assert f"checkpoint {checkpoint} is unreadable" in log
  assert "trying the checkpoint before it" in log
  assert "Resumed from step 4 (epoch 2, batch 0)." in log
  moved = os.listdir(interrupted["workdir"] / checkpointing.UNREADABLE_DIR)
  assert len(moved) == 1
  assert moved[0].startswith("8-")


@pytest.mark.parametrize("name", OUTPUT_FILES)
def test_interrupted_run_matches_reference(interrupted, reference, name):
  assert interrupted["final_code"] == 0, interrupted["final_log"][-4000:]
  expected = (reference / name).read_text(encoding="utf-8")
  actual = (interrupted["workdir"] / name).read_text(encoding="utf-8")
  assert actual == expected, _context(interrupted)


def test_interrupted_label_history_matches(interrupted, reference):
  names = sorted(os.listdir(reference / "labels"))
  assert names == ["epoch_001.npz", "epoch_002.npz", "epoch_003.npz"]
  assert sorted(os.listdir(interrupted["workdir"] / "labels")) == names
  for name in names:
    expected = np.load(reference / "labels" / name)
    actual = np.load(interrupted["workdir"] / "labels" / name)
    assert sorted(actual.files) == sorted(expected.files)
    for key in expected.files:
      np.testing.assert_array_equal(actual[key], expected[key], err_msg=f"{name}/{key}; {_context(interrupted)}")


def test_reference_results_are_real_metrics(reference):
  results = json.loads((reference / "results.json").read_text(encoding="utf-8"))
  assert {"MAE", "Corr", "Has0_acc_2", "Non0_acc_2", "Mult_acc_7"} <= set(results)
  assert all(np.isfinite(value) for value in results.values())
  rows = [json.loads(line) for line in (reference / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
  assert [row["epoch"] for row in rows] == [1, 2, 3]


def test_non_finite_step_named_and_checkpoints_kept(interrupted):
  workdir, code, log = interrupted["nan"]
  assert code != 0
  assert "Resumed from step 8 (epoch 3, batch 0)." in log
  # Step 9 applies an audio update of about 1e30, so step 10 overflows.
  assert "NonFiniteLossError: step 10: not finite: loss terms" in log
  assert "'total' = inf" in log or "'total' = nan" in log
  groups = re.search(r"the gradient of the (.*?) parameters", log)
  assert groups is not None
  assert "'audio'" in groups.group(1).split(", ")
  snapshot = interrupted["snapshot"]
  for step in (4, 8):
    assert _tree_digest(workdir / "checkpoints" / str(step)) == _tree_digest(snapshot / "checkpoints" / str(step))
  # The newest checkpoint still restores, and every array in it is finite.
  manager = checkpointing.create_manager(str(workdir), "MAE", "min")
  restored = manager.restore(8, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(restored.state)]
  assert leaves
  assert all(np.isfinite(leaf).all() for leaf in leaves if leaf.dtype.kind == "f")


def test_other_data_shapes_rejected(interrupted):
  workdir, code, log = interrupted["shapes"]
  assert code != 0
  assert "CheckpointMismatchError" in log
  mismatch = re.search(r"stores '(label_state/[^']+)' with shape \((\d+), \d+\), but this run's state has shape \((\d+), \d+\)", log)
  assert mismatch is not None, log[-3000:]
  assert mismatch.group(2, 3) == ("128", "160")
  snapshot = interrupted["snapshot"]
  assert _tree_digest(workdir / "checkpoints") == _tree_digest(snapshot / "checkpoints")
  assert filecmp.cmp(workdir / "config.json", snapshot / "config.json", shallow=False)


@pytest.mark.parametrize(
    "key, value, saved",
    [("model.fusion_dim", 64, "128"), ("text_encoder.random_init.hidden_size", 64, "32")],
)
def test_other_model_config_rejected(interrupted, tmp_path, key, value, saved):
  workdir = tmp_path / "run"
  shutil.copytree(interrupted["snapshot"], workdir)
  before = _tree_digest(workdir)
  with pytest.raises(ValueError) as error:
    train.train_and_evaluate(_demo_config(**{key: value}), str(workdir))
  assert f"used {key}={saved}, but this config has {key}={value}" in str(error.value)
  assert _tree_digest(workdir) == before


def test_other_encoder_rejected(interrupted, tmp_path, minilm):
  workdir = tmp_path / "run"
  shutil.copytree(interrupted["snapshot"], workdir)
  with pytest.raises(ValueError) as error:
    train.train_and_evaluate(_demo_config(**{"text_encoder.checkpoint": str(minilm)}), str(workdir))
  assert f"used text_encoder.checkpoint='', but this config has text_encoder.checkpoint='{minilm}'" in str(error.value)


def test_finished_run_not_retrained(reference, caplog):
  before = _tree_digest(reference)
  times = {path: os.stat(path).st_mtime_ns for path in glob.glob(str(reference / "**"), recursive=True)}
  expected = json.loads((reference / "results.json").read_text(encoding="utf-8"))
  with caplog.at_level(logging.INFO):
    results = train.train_and_evaluate(_demo_config(**{"train.num_epochs": 5}), str(reference))
  assert results == expected
  assert "this run already finished; nothing to do" in caplog.text
  assert _tree_digest(reference) == before
  assert {path: os.stat(path).st_mtime_ns for path in times} == times
