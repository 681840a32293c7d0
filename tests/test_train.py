"""End-to-end training on the demo config: it learns, and devices do not change results."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from mcer_jax import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
NO_DROPOUT = [
    "--config.model.text_dropout=0",
    "--config.model.post_dropout=0",
    "--config.model.cross.dropout=0",
    "--config.model.audio_dropout=0",
    "--config.model.vision_dropout=0",
]


def _run_main(workdir, *overrides, devices=1, cache_dir=None):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  if cache_dir is not None:
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
  command = [
      sys.executable, "-m", "mcer_jax.main",
      "--config", str(REPO / "experiments" / "demo.py"),
      "--workdir", str(workdir),
      *overrides,
  ]
  result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-4000:]
  return result


def _metrics_log(workdir):
  with open(pathlib.Path(workdir) / "metrics.jsonl", encoding="utf-8") as stream:
    return [json.loads(line) for line in stream if line.strip()]


def test_demo_learns_beyond_mean_predictor(tmp_path):
  _run_main(tmp_path, "--config.train.num_epochs=6", cache_dir=tmp_path / "cache")
  with open(tmp_path / "results.json", encoding="utf-8") as stream:
    results = json.load(stream)

  # The MAE of predicting the training mean, from the run's own predictions file.
  import csv

  with open(tmp_path / "predictions.csv", encoding="utf-8") as stream:
    rows = list(csv.DictReader(stream))
  train_mean = np.mean([float(row["label"]) for row in rows if row["split"] == "train"])
  valid_labels = np.array([float(row["label"]) for row in rows if row["split"] == "valid"])
  mean_predictor_mae = np.abs(valid_labels - train_mean).mean()

  best_valid_mae = min(row["valid/MAE"] for row in _metrics_log(tmp_path))
  assert best_valid_mae < 0.8 * mean_predictor_mae
  assert results["Corr"] > 0.5
  for name in ("Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score", "Mult_acc_5", "Mult_acc_7", "MAE", "Corr"):
    assert name in results


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_one_and_eight_devices_agree(tmp_path, check_generated_labels, dtype):
  """One device and eight give the same losses, metrics and label memories after each epoch.

  In float64 everything agrees within 1e-5 (measured: labels within 8e-8,
  losses within 1e-9). In float32 the losses and metrics do too, but a
  generated label divides by delta_f and so magnifies the rounding of another
  gradient summation order (measured: up to 2.3e-5), so float32 labels are
  held to the shared `check_generated_labels` rule.
  """
  overrides = [
      "--config.train.num_epochs=2", "--config.data.num_synthetic=128",
      f"--config.model.dtype={dtype}", *NO_DROPOUT,
  ]
  one, eight = tmp_path / "one", tmp_path / "eight"
  _run_main(one, *overrides, devices=1, cache_dir=tmp_path / "cache1")
  _run_main(eight, *overrides, devices=8, cache_dir=tmp_path / "cache8")

  for row_one, row_eight in zip(_metrics_log(one), _metrics_log(eight), strict=True):
    assert row_one.keys() == row_eight.keys()
    for key, value in row_one.items():
      np.testing.assert_allclose(row_eight[key], value, atol=1e-5, rtol=1e-5, err_msg=key)

  for epoch in (1, 2):
    labels_one = np.load(one / "labels" / f"epoch_{epoch:03d}.npz")
    labels_eight = np.load(eight / "labels" / f"epoch_{epoch:03d}.npz")
    assert sorted(labels_one.files) == sorted(labels_eight.files)
    for family in labels_one.files:
      assert labels_one[family].dtype == np.dtype(dtype)
      if dtype == "float64":
        np.testing.assert_allclose(
            labels_eight[family], labels_one[family], atol=1e-5, rtol=0,
            err_msg=f"epoch {epoch} {family}")
      else:
        check_generated_labels(labels_eight[family], labels_one[family], f"epoch {epoch} {family}")
  # Epoch 1 keeps the human labels and epoch 2 updates them, so the test compares real updates.
  first = np.load(one / "labels" / "epoch_001.npz")
  assert max(np.abs(labels_one[f] - first[f]).max() for f in first.files) > 1e-3


def test_unknown_config_key_is_rejected(tmp_path):
  command = [
      sys.executable, "-m", "mcer_jax.main",
      "--config", str(REPO / "experiments" / "demo.py"),
      "--workdir", str(tmp_path),
      "--config.train.num_epoch=3",
  ]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert "unknown key 'num_epoch'" in result.stderr
  assert '"num_epochs"' in result.stderr
  # One line, not a traceback.
  assert "Traceback" not in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1


def test_experiment_configs_have_required_keys():
  import importlib.util

  for name in ("mosi", "mosei", "sims", "demo", "self_mm"):
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    assert "python -m mcer_jax.main" in module.get_config.__doc__ or "python -m mcer_jax.main" in module.__doc__
    for key in ("seed", "data.manual_dir", "data.data_dir", "text_encoder.checkpoint", "train.num_epochs", "train.batch_size"):
      value = config
      for part in key.split("."):
        value = value[part]
    with pytest.raises(AttributeError, match="does not exist"):
      config.train.no_such_key = 1
  assert config_lib.get_base_config().data.name == "mosi"


def _saved_progress(workdir):
  """The progress record of the newest checkpoint in a work directory."""
  checkpoints = pathlib.Path(workdir) / "checkpoints"
  newest = max((p for p in checkpoints.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
  with open(newest / "progress" / "metadata", encoding="utf-8") as stream:
    return json.load(stream)


def test_selection_skips_epochs_before_start(tmp_path):
  # demo.py trains with batches of 32, so 64 samples make 2 steps an epoch
  # and epoch 3 is the first to end at step 5 or later.
  _run_main(
      tmp_path, "--config.train.num_epochs=3", "--config.train.selection_start_step=5",
      "--config.data.num_synthetic=64", "--config.train.selection_mode=max", cache_dir=tmp_path / "cache",
  )
  log = _metrics_log(tmp_path)
  assert [row["epoch"] for row in log] == [1, 2, 3]
  assert [row["step"] for row in log] == [2, 4, 6]
  # Selecting the largest validation MAE from epoch 1 on would pick an earlier epoch.
  assert max(log[0]["valid/MAE"], log[1]["valid/MAE"]) > log[2]["valid/MAE"]
  progress = _saved_progress(tmp_path)
  assert progress["best_step"] == 6
  assert progress["best_value"] == log[2]["valid/MAE"]


def test_selection_start_after_last_step_selects_last_epoch(tmp_path):
  result = _run_main(
      tmp_path, "--config.train.num_epochs=2", "--config.train.selection_start_step=5",
      "--config.data.num_synthetic=64", "--config.train.selection_mode=max", cache_dir=tmp_path / "cache",
  )
  assert "selection_start_step=5 is after the last step of this run (2 epochs of 2 steps end at step 4)" in result.stderr
  log = _metrics_log(tmp_path)
  assert [row["step"] for row in log] == [2, 4]
  assert log[0]["valid/MAE"] > log[1]["valid/MAE"]
  assert _saved_progress(tmp_path)["best_step"] == 4


def _demo_config(*overrides):
  """Returns experiments/demo.py with `--config.key=value` overrides, as the entry point builds it."""
  from mcer_jax import research

  return research.resolve_config(str(REPO / "experiments" / "demo.py"), list(overrides))


def test_parameter_average_follows_each_step():
  import jax

  from mcer_jax import data as data_lib
  from mcer_jax import train
  from mcer_jax.models import mcer as mcer_model

  config = _demo_config("--config.data.num_synthetic=64", "--config.train.ema_decay=0.5")
  splits, info = data_lib.load_splits(config)
  source = splits["train"]
  model = mcer_model.build_model(config, info.feature_dims)
  human = np.asarray([float(source[i]["labels"]) for i in range(len(source))], np.float32)
  state = train.create_train_state(config, model, train._example_batch(source, config), human)
  initial = jax.device_get(state.params)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.ema_params), initial)

  replicated = train.replicate(state)
  step = train.TrainStep()
  epoch = train.replicate(np.asarray(1, np.int32))
  after = []
  for batch in list(train._batches(source, config, config.train.batch_size, epoch=1, shuffle=True))[:2]:
    replicated, _ = step(replicated, batch, epoch)
    after.append(train.unreplicate(replicated.params))
  ema = train.unreplicate(replicated.ema_params)

  # Two steps of ema = 0.5 ema + 0.5 params, starting from the initial parameters.
  expected = jax.tree.map(lambda p0, p1, p2: 0.25 * p0 + 0.25 * p1 + 0.5 * p2, initial, after[0], after[1])
  jax.tree.map(lambda e, x: np.testing.assert_allclose(e, x, rtol=1e-6, atol=1e-7), ema, expected)
  # The average is not the last parameters, and evaluation reads it.
  kernel = lambda tree: tree["multimodal"]["head"]["layer_3"]["kernel"]
  assert np.abs(kernel(ema) - kernel(after[1])).max() > 1e-6
  assert train.eval_params(replicated) is replicated.ema_params


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_parameter_average_rejects_bad_decay(decay):
  from mcer_jax import train

  config = _demo_config(f"--config.train.ema_decay={decay}")
  with pytest.raises(ValueError, match=r"config.train.ema_decay must be in \[0, 1\)"):
    train.create_train_state(config, None, {}, np.zeros(2, np.float32))


def test_evaluate_uses_saved_parameter_average(tmp_path):
  overrides = ["--config.train.num_epochs=1", "--config.data.num_synthetic=64"]
  _run_main(tmp_path, *overrides, "--config.train.ema_decay=0.5", cache_dir=tmp_path / "cache")
  # Evaluated without repeating ema_decay, the checkpoint's average is still what is restored.
  _run_main(tmp_path, *overrides, "--mode=evaluate", cache_dir=tmp_path / "cache")
  with open(tmp_path / "results.json", encoding="utf-8") as stream:
    results = json.load(stream)
  with open(tmp_path / "eval_test.json", encoding="utf-8") as stream:
    evaluated = json.load(stream)
  assert evaluated == pytest.approx(results, abs=1e-6)


def test_resume_rejects_other_parameter_average(tmp_path):
  (tmp_path / "config.json").write_text(
      json.dumps(config_lib.get_base_config().to_dict()), encoding="utf-8")
  command = [
      sys.executable, "-m", "mcer_jax.main",
      "--config", str(REPO / "experiments" / "demo.py"),
      "--workdir", str(tmp_path),
      "--config.train.ema_decay=0.8",
  ]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert "train.ema_decay=0.0" in result.stderr
  assert "--config.train.ema_decay=0.0" in result.stderr
