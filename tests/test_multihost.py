"""Multi-process data parallelism on CPU: two processes of two devices train like one of four.

The processes talk through `jax.distributed` on 127.0.0.1 and gloo collectives.
Dropout is off because its masks depend on the device a sample lands on. The
sampling noise of the variational encoders is drawn from each sample's index,
so it is the same in every layout.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from mcer_jax.data import pipeline

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_TRAIN = 128
OVERRIDES = [
    "--config.train.num_epochs=2",
    f"--config.data.num_synthetic={NUM_TRAIN}",
    "--config.model.text_dropout=0",
    "--config.model.post_dropout=0",
    "--config.model.cross.dropout=0",
    "--config.model.audio_dropout=0",
    "--config.model.vision_dropout=0",
]
# The demo config's global batch of 32 samples.
BATCH_SIZE = 32
STEPS_PER_EPOCH = NUM_TRAIN // BATCH_SIZE
# Generous, because a loaded two-core machine runs the processes several times slower.
TIMEOUT_S = 1200
# Gloo sums gradients across processes in another order than one process sums
# its devices. After two epochs the largest differences measured here were
# 2e-6 relative in the loss terms and metrics. Generated labels are compared by
# the `check_generated_labels` fixture, which allows for their amplification.
RTOL, ATOL = 1e-5, 1e-5


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> pathlib.Path:
  """A compilation cache shared by the runs of this file."""
  return tmp_path_factory.mktemp("compilation_cache")


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


def _environment(devices: int, cache_dir: pathlib.Path) -> dict[str, str]:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  # Only process 0 of a multi-process run writes this cache, and jax 0.10.2
  # keys the other processes' programs apart, so they compile every time.
  # A JAX_COMPILATION_CACHE_DIR set by the caller is kept, for reruns.
  env.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache_dir))
  return env


def _start(workdir, log_path, env, extra) -> tuple[subprocess.Popen, pathlib.Path]:
  command = [
      sys.executable, "-m", "mcer_jax.main",
      "--config", str(REPO / "experiments" / "demo.py"),
      "--workdir", str(workdir),
      *OVERRIDES,
      *extra,
  ]
  with open(log_path, "w", encoding="utf-8") as log:
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
  return process, pathlib.Path(log_path)


def _start_single(workdir, devices, cache_dir, extra=()):
  """Starts one process; its log is WORKDIR.log."""
  return [_start(workdir, workdir.parent / f"{workdir.name}.log", _environment(devices, cache_dir), extra)]


def _start_distributed(workdir, num_processes, devices, cache_dir, extra=()):
  """Starts the processes of one run; their logs are WORKDIR.process_<id>.log."""
  port = _free_port()
  env = _environment(devices, cache_dir)
  # Without this setting the coordinator listens on all interfaces.
  env["JAX_COORDINATOR_BIND_ADDRESS"] = f"127.0.0.1:{port}"
  runs = []
  for process_id in range(num_processes):
    settings = [
        "--config.distributed.initialize=True",
        f"--config.distributed.coordinator_address=127.0.0.1:{port}",
        f"--config.distributed.num_processes={num_processes}",
        f"--config.distributed.process_id={process_id}",
    ]
    log_path = workdir.parent / f"{workdir.name}.process_{process_id}.log"
    runs.append(_start(workdir, log_path, env, [*settings, *extra]))
  return runs


def _wait(runs, deadline: float, expected_code: int = 0) -> None:
  """Waits for every process; on another exit code or at `deadline` stops the rest and fails with their logs."""
  failed = None
  for process, log_path in runs:
    try:
      code = process.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
      failed = f"{log_path.name} timed out"
      break
    if code != expected_code:
      failed = f"{log_path.name} exited with {code}, expected {expected_code}"
      break
  if failed is None:
    return
  for process, _ in runs:
    if process.poll() is None:
      process.kill()
      process.wait()
  tails = "\n".join(f"--- {path}\n{path.read_text(errors='replace')[-3000:]}" for _, path in runs)
  raise AssertionError(f"{failed}\n{tails}")


def _metrics_log(workdir) -> list[dict]:
  with open(pathlib.Path(workdir) / "metrics.jsonl", encoding="utf-8") as stream:
    return [json.loads(line) for line in stream if line.strip()]


def _results(workdir) -> dict:
  with open(pathlib.Path(workdir) / "results.json", encoding="utf-8") as stream:
    return json.load(stream)


def _assert_rows_close(actual: dict, expected: dict, what: str) -> None:
  assert actual.keys() == expected.keys(), what
  for key, value in expected.items():
    np.testing.assert_allclose(actual[key], value, rtol=RTOL, atol=ATOL, err_msg=f"{what}: {key}")


def _assert_labels_close(workdir, reference, epoch: int, what: str, check) -> None:
  name = f"epoch_{epoch:03d}.npz"
  actual = np.load(pathlib.Path(workdir) / "labels" / name)
  expected = np.load(pathlib.Path(reference) / "labels" / name)
  assert sorted(actual.files) == sorted(expected.files), what
  for family in expected.files:
    check(actual[family], expected[family], f"{what}: {name} {family}")


def _checkpoint_steps(workdir) -> set[int]:
  return {int(path.name) for path in (pathlib.Path(workdir) / "checkpoints").iterdir() if path.name.isdigit()}


def test_two_processes_match_one_process(tmp_path, cache_dir, check_generated_labels):
  multi, single, resumed = tmp_path / "multi", tmp_path / "single", tmp_path / "resumed"
  deadline = time.monotonic() + TIMEOUT_S

  # The two layouts run side by side; the resume needs the multi-process checkpoint.
  multi_runs = _start_distributed(multi, num_processes=2, devices=2, cache_dir=cache_dir)
  single_runs = _start_single(single, devices=4, cache_dir=cache_dir)
  try:
    _wait(multi_runs, deadline)
  except AssertionError:
    _wait(single_runs, time.monotonic())
    raise

  # Resume the multi-process run after epoch 1 with one process of one device.
  shutil.copytree(multi, resumed)
  shutil.rmtree(resumed / "checkpoints" / str(2 * STEPS_PER_EPOCH))
  for name in ("results.json", "predictions.csv", "labels/epoch_002.npz"):
    (resumed / name).unlink()
  resumed_runs = _start_single(resumed, devices=1, cache_dir=cache_dir)
  _wait(single_runs + resumed_runs, deadline)

  # Only process 0 wrote: one line per epoch, one TensorBoard file, one checkpoint each epoch.
  multi_log = _metrics_log(multi)
  assert [row["epoch"] for row in multi_log] == [1, 2]
  assert len(list((multi / "tensorboard").iterdir())) == 1
  # Steps count global batches: 2 processes x 2 devices x 8 samples = 32 = config.train.batch_size.
  assert _checkpoint_steps(multi) == {STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH}

  for actual, expected in zip(multi_log, _metrics_log(single), strict=True):
    _assert_rows_close(actual, expected, f"epoch {expected['epoch']}, 2x2 against 1x4")
  _assert_rows_close(_results(multi), _results(single), "test metrics, 2x2 against 1x4")
  for epoch in (1, 2):
    _assert_labels_close(multi, single, epoch, "2x2 against 1x4", check_generated_labels)
  # Epoch 1 keeps the human labels and epoch 2 updates them, so epoch 2 compares real updates.
  first, second = np.load(single / "labels" / "epoch_001.npz"), np.load(single / "labels" / "epoch_002.npz")
  assert max(np.abs(second[family] - first[family]).max() for family in first.files) > 1e-3

  # The checkpoint saved by 2 processes of 2 devices continues on 1 device as if never stopped.
  assert f"Resumed from step {STEPS_PER_EPOCH} (epoch 2, batch 0)" in (tmp_path / "resumed.log").read_text()
  resumed_log = _metrics_log(resumed)
  assert [row["epoch"] for row in resumed_log] == [1, 2]
  _assert_rows_close(resumed_log[1], multi_log[1], "epoch 2, resumed on 1x1 against 2x2")
  _assert_rows_close(_results(resumed), _results(multi), "test metrics, resumed on 1x1 against 2x2")
  _assert_labels_close(resumed, multi, 2, "resumed on 1x1 against 2x2", check_generated_labels)


# Only the multimodal head, which compiles in seconds; stopping on SIGTERM
# does not depend on the model.
SMALL_MODEL = [
    "--config.model.unimodal_tasks=False",
    "--config.model.cross_tasks=",
    "--config.model.multimodal_bottleneck=False",
    "--config.model.unimodal_bottleneck=False",
    "--config.model.discriminator=False",
    "--config.model.mutual_information=False",
]


def test_sigterm_to_one_process_stops_both(tmp_path, cache_dir):
  workdir = tmp_path / "run"
  deadline = time.monotonic() + TIMEOUT_S
  # Plain shuffled batches, so the expected row order below is the epoch's permutation.
  runs = _start_distributed(
      workdir, num_processes=2, devices=2, cache_dir=cache_dir, extra=[*SMALL_MODEL, "--config.data.length_pool=0"]
  )
  process, log_path = runs[1]
  while "Process 1 of 2" not in log_path.read_text(errors="replace"):
    if time.monotonic() > deadline or any(run.poll() is not None for run, _ in runs):
      _wait(runs, time.monotonic())
      raise AssertionError(f"{log_path.name} ended or timed out before JAX started")
    time.sleep(0.2)
  # JAX's preemption sync manager catches SIGTERM from here on.
  process.send_signal(signal.SIGTERM)
  _wait(runs, deadline, expected_code=143)

  # Process 0 never got the signal, yet both stopped after the same step.
  pattern = re.compile(r"stopped by SIGTERM at epoch (\d+), batch (\d+)")
  stops = [pattern.findall(path.read_text(errors="replace")) for _, path in runs]
  assert len(stops[0]) == 1, stops
  assert stops[1] == stops[0]
  epoch, batch = (int(value) for value in stops[0][0])
  step = (epoch - 1) * STEPS_PER_EPOCH + batch
  assert max(_checkpoint_steps(workdir)) == step

  # The saved accumulator contains the rows of both processes, in the order of the global batches.
  with open(workdir / "checkpoints" / str(step) / "progress" / "metadata", encoding="utf-8") as stream:
    accumulator = json.load(stream)["accumulator"]
  order = pipeline.epoch_order(NUM_TRAIN, seed=0, epoch=epoch, shuffle=True)
  np.testing.assert_array_equal(accumulator["index"], order[: batch * BATCH_SIZE])
  assert len(accumulator["prediction"]) == batch * BATCH_SIZE


def _initialize_in_subprocess(tmp_path, *overrides) -> subprocess.CompletedProcess:
  """Runs `distributed.initialize` on the base config with `overrides` in a fresh interpreter."""
  script = (
      "import sys\n"
      "from mcer_jax import config as config_lib, distributed\n"
      "config = config_lib.get_base_config()\n"
      "for item in sys.argv[1:]:\n"
      "  key, value = item.split('=', 1)\n"
      "  setattr(config.distributed, key, type(getattr(config.distributed, key))(value))\n"
      "config.distributed.initialize = True\n"
      "distributed.initialize(config.distributed)\n"
  )
  cluster_variables = ("SLURM_", "OMPI_", "KUBERNETES_", "JAX_COORDINATOR")
  env = {key: value for key, value in os.environ.items() if not key.startswith(cluster_variables)}
  env["JAX_PLATFORMS"] = "cpu"
  return subprocess.run(
      [sys.executable, "-c", script, *overrides], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
  )


def test_process_id_out_of_range_is_rejected(tmp_path):
  result = _initialize_in_subprocess(tmp_path, "coordinator_address=127.0.0.1:1", "num_processes=2", "process_id=2")
  assert result.returncode != 0
  assert "config.distributed.process_id in [0, num_processes)" in result.stderr
  assert "process_id=2" in result.stderr


def test_empty_coordinator_outside_cluster_is_rejected(tmp_path):
  result = _initialize_in_subprocess(tmp_path)
  assert result.returncode != 0
  assert "config.distributed.coordinator_address is empty" in result.stderr
  assert "JAX found no cluster settings" in result.stderr
