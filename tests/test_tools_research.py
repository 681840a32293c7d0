"""The research tools (run_seeds, ablate, case_study, report) end to end on the real MOSI samples.

The runs use experiments/mosi.py on the 150 real MOSI utterances with a tiny,
randomly initialised text encoder (vocabulary 30522 so the real token ids fit)
and two epochs. They share one JAX compilation cache, so the file's five small
runs take about five minutes on two CPU cores.
"""

import csv
import json
import math
import os
import pathlib
import pickle
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from matplotlib import image as mpimg

from mcer_jax import research
from mcer_jax.data import safe_pickle

REPO = pathlib.Path(__file__).resolve().parents[1]

SEEDS = (1111, 1112)
TINY = (
    "--config.text_encoder.checkpoint=",
    "--config.text_encoder.random_init.vocab_size=30522",
    "--config.text_encoder.random_init.hidden_size=32",
    "--config.text_encoder.random_init.num_layers=1",
    "--config.text_encoder.random_init.num_heads=2",
    "--config.text_encoder.random_init.intermediate_size=64",
    "--config.data.text_buckets=(50,)",
    "--config.model.cross.num_layers=1",
    "--config.train.num_epochs=2",
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tool(name):
  return [sys.executable, str(REPO / "tools" / f"{name}.py")]


def run_tool(args, timeout=600):
  return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def data_overrides(mosi_real, data_dir):
  return (f"--config.data.manual_dir={mosi_real / 'mmsa'}", f"--config.data.data_dir={data_dir}")


def read_csv_rows(path):
  with open(path, newline="", encoding="utf-8") as stream:
    return list(csv.DictReader(stream))


def read_json(path):
  with open(path, encoding="utf-8") as stream:
    return json.load(stream)


def markdown_rows(text):
  """Data rows of the Markdown tables in `text`, as lists of cells (header and rule rows dropped)."""
  rows = []
  lines = text.splitlines()
  for number, line in enumerate(lines):
    if not line.startswith("| "):
      continue
    if number + 1 < len(lines) and lines[number + 1].startswith("|---"):
      continue  # Header.
    rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
  return rows


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, mosi_real):
  """Folders shared by the module's runs: prepared data and the compilation cache."""
  root = tmp_path_factory.mktemp("research")
  return {"root": root, "data_dir": root / "tfds", "cache": root / "jax_cache", "mosi_real": mosi_real}


@pytest.fixture(scope="module")
def seed_runs(workspace):
  """run_seeds with two seeds: stopped by SIGTERM after seed 1111's first epoch, run again, run a third time."""
  workdir = workspace["root"] / "seeds"
  command = [
      *tool("run_seeds"), "--config", "experiments/mosi.py", "--workdir", str(workdir),
      "--seeds", ",".join(map(str, SEEDS)), "--jax-cache-dir", str(workspace["cache"]),
      *data_overrides(workspace["mosi_real"], workspace["data_dir"]), *TINY,
  ]
  first_log = workdir / f"seed_{SEEDS[0]}" / "metrics.jsonl"

  process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.monotonic() + 400
  while time.monotonic() < deadline and process.poll() is None:
    if first_log.exists() and first_log.read_text().strip():
      break
    time.sleep(0.2)
  process.send_signal(signal.SIGTERM)
  interrupted_output, _ = process.communicate(timeout=120)

  interrupted = {
      "returncode": process.returncode,
      "output": interrupted_output,
      "finished": research.is_finished(workdir / f"seed_{SEEDS[0]}"),
  }
  resumed = run_tool(command)
  assert resumed.returncode == 0, resumed.stdout + resumed.stderr

  mtimes = {seed: os.path.getmtime(workdir / f"seed_{seed}" / "results.json") for seed in SEEDS}
  again = run_tool(command, timeout=120)
  return {
      "workdir": workdir,
      "command": command,
      "interrupted": interrupted,
      "resumed": resumed,
      "again": again,
      "mtimes": mtimes,
  }


@pytest.fixture(scope="module")
def ablation(workspace):
  """ablate.py with the entries full, m_s and m_s_c_all (which reuses full's run)."""
  workdir = workspace["root"] / "ablation"
  result = run_tool([
      *tool("ablate"), "--config", "experiments/mosi.py", "--workdir", str(workdir),
      "--only", "full,m_s,m_s_c_all", "--seeds", str(SEEDS[0]), "--jax-cache-dir", str(workspace["cache"]),
      *data_overrides(workspace["mosi_real"], workspace["data_dir"]), *TINY,
  ])
  assert result.returncode == 0, result.stdout + result.stderr
  return {"workdir": workdir, "output": result.stdout}


# Pure helpers.


def test_summarize_mean_and_sample_std():
  results = {1: {"MAE": 0.5, "Corr": 0.1}, 2: {"MAE": 0.7, "Corr": 0.4}, 3: {"MAE": 0.9, "Corr": 0.1}}
  metrics, means, stds = research.summarize(results)
  assert metrics == ["MAE", "Corr"]
  assert means["MAE"] == pytest.approx(0.7)
  assert means["Corr"] == pytest.approx(0.2)
  # Sample std by hand: deviations of MAE are -0.2, 0, 0.2 -> sqrt(0.08 / 2) = 0.2.
  assert stds["MAE"] == pytest.approx(0.2)
  assert stds["Corr"] == pytest.approx(math.sqrt((0.01 + 0.04 + 0.01) / 2))


def test_summarize_single_run_has_no_std():
  _, means, stds = research.summarize({1: {"MAE": 0.5}})
  assert means["MAE"] == 0.5
  assert stds["MAE"] is None


def test_summarize_rejects_mixed_metrics():
  with pytest.raises(research.ResearchError, match="different metrics"):
    research.summarize({1: {"MAE": 0.5}, 2: {"Corr": 0.1}})


def test_format_metric_percent_and_decimals():
  assert research.format_metric("Non0_acc_2", 0.86741) == "86.74"
  assert research.format_metric("Has0_F1_score", 0.5) == "50.00"
  assert research.format_metric("MAE", 0.69949) == "0.699"
  assert research.format_mean_std("Non0_acc_2", 0.85, 0.0123) == "85.00 ± 1.23"
  assert research.format_mean_std("MAE", 0.7, None) == "0.700"


def test_parse_seeds_rejects_bad_lists():
  assert research.parse_seeds("1111, 1112") == [1111, 1112]
  for text, message in (("11a", "not an integer"), ("", "names no seed"), ("1,1", "twice")):
    with pytest.raises(research.ResearchError, match=message):
      research.parse_seeds(text)


def test_resolve_config_applies_overrides():
  config = research.resolve_config(
      str(REPO / "experiments" / "mosi.py"), ["--config.model.cross_tasks=", "--config.seed=7"])
  assert config.model.cross_tasks == ""
  assert config.seed == 7


def test_resolve_config_rejects_unknown_key():
  with pytest.raises(research.ResearchError, match="does not have"):
    research.resolve_config(str(REPO / "experiments" / "mosi.py"), ["--config.model.no_such_key=1"])


def test_resolve_config_rejects_bad_value():
  with pytest.raises(research.ResearchError, match="invalid override"):
    research.resolve_config(str(REPO / "experiments" / "mosi.py"), ["--config.seed=abc"])


def test_overrides_need_config_prefix_and_value():
  with pytest.raises(research.ResearchError, match="only config overrides"):
    research.check_overrides(["--mode=train"])
  with pytest.raises(research.ResearchError, match="has no value"):
    research.check_overrides(["--config.seed"])


# run_seeds.


@pytest.mark.slow
def test_run_seeds_stops_on_sigterm(seed_runs):
  interrupted = seed_runs["interrupted"]
  assert interrupted["returncode"] == research.EXIT_PREEMPTED, interrupted["output"]
  assert not interrupted["finished"]
  assert "stopped; run the same command again to resume" in interrupted["output"]


@pytest.mark.slow
def test_run_seeds_resumes_stopped_seed(seed_runs):
  run = seed_runs["workdir"] / f"seed_{SEEDS[0]}"
  assert "resuming after epoch 1/2" in seed_runs["resumed"].stdout
  assert "Resumed from step" in (run / "train.log").read_text()
  epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
  assert epochs == [1, 2]


@pytest.mark.slow
def test_run_seeds_csv_matches_results(seed_runs):
  workdir = seed_runs["workdir"]
  rows = {row["run"]: row for row in read_csv_rows(workdir / "seeds.csv")}
  assert list(rows) == [f"seed_{s}" for s in SEEDS] + ["mean", "std"]
  results = {seed: read_json(workdir / f"seed_{seed}" / "results.json") for seed in SEEDS}
  assert set(rows["mean"]) - {"run"} == set(results[SEEDS[0]])
  for metric in results[SEEDS[0]]:
    values = [results[seed][metric] for seed in SEEDS]
    for seed, value in zip(SEEDS, values):
      assert float(rows[f"seed_{seed}"][metric]) == value
    assert float(rows["mean"][metric]) == pytest.approx((values[0] + values[1]) / 2, abs=1e-12)
    # Sample std of two values: |a - b| / sqrt(2).
    assert float(rows["std"][metric]) == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2), abs=1e-12)


@pytest.mark.slow
def test_run_seeds_markdown_lists_seeds(seed_runs):
  text = (seed_runs["workdir"] / "seeds.md").read_text()
  rows = {row[0]: row for row in markdown_rows(text)}
  results = read_json(seed_runs["workdir"] / f"seed_{SEEDS[1]}" / "results.json")
  header = [line for line in text.splitlines() if line.startswith("| run")][0]
  columns = [cell.strip() for cell in header.split("|")[1:-1]]
  assert rows[f"seed {SEEDS[1]}"][columns.index("MAE")] == f"{results['MAE']:.3f}"
  assert rows[f"seed {SEEDS[1]}"][columns.index("Non0_acc_2")] == f"{100 * results['Non0_acc_2']:.2f}"
  assert "mean ± std (2 seeds)" in rows


@pytest.mark.slow
def test_run_seeds_skips_finished_seeds(seed_runs):
  again = seed_runs["again"]
  assert again.returncode == 0, again.stderr
  assert again.stdout.count("finished before, skipped") == len(SEEDS)
  for seed in SEEDS:
    assert os.path.getmtime(seed_runs["workdir"] / f"seed_{seed}" / "results.json") == seed_runs["mtimes"][seed]


@pytest.mark.slow
def test_run_seeds_rejects_changed_config(seed_runs):
  command = [arg for arg in seed_runs["command"] if arg != "--config.train.num_epochs=2"]
  result = run_tool([*command, "--config.train.num_epochs=3"], timeout=120)
  assert result.returncode == 1
  assert "train.num_epochs: run has 2, requested 3" in result.stderr


def test_run_seeds_rejects_seed_override(tmp_path):
  result = run_tool([*tool("run_seeds"), "--config", "experiments/mosi.py", "--workdir", str(tmp_path),
                     "--config.seed=3"], timeout=120)
  assert result.returncode == 2
  assert "use --seeds instead" in result.stderr


# ablate.


@pytest.mark.slow
def test_ablate_rows_have_results(ablation):
  workdir = ablation["workdir"]
  rows = {row["name"]: row for row in read_csv_rows(workdir / "ablation.csv")}
  assert list(rows) == ["full", "m_s", "m_s_c_all"]
  assert rows["m_s_c_all"]["run"] == "full"
  for name, row in rows.items():
    results = read_json(workdir / row["run"] / f"seed_{SEEDS[0]}" / "results.json")
    for metric, value in results.items():
      assert float(row[f"{metric}_mean"]) == value, (name, metric)
      assert row[f"{metric}_std"] == ""
  assert float(rows["m_s"]["paper_MAE"]) == 0.732
  assert float(rows["m_s"]["paper_Non0_acc_2"]) == pytest.approx(0.8506)


@pytest.mark.slow
def test_ablate_configs_follow_grid(ablation):
  full = read_json(ablation["workdir"] / "full" / f"seed_{SEEDS[0]}" / "config.json")
  reduced = read_json(ablation["workdir"] / "m_s" / f"seed_{SEEDS[0]}" / "config.json")
  assert full["model"]["cross_tasks"] == "mt,ma,mv"
  assert full["model"]["discriminator"] is True
  assert reduced["model"]["cross_tasks"] == ""
  assert reduced["model"]["discriminator"] is False
  full["model"].update(cross_tasks="", discriminator=False)
  assert full == reduced


@pytest.mark.slow
def test_ablate_markdown_has_paper_layout(ablation):
  text = (ablation["workdir"] / "ablation.md").read_text()
  assert "## Table IV: losses" in text
  assert "## Table V: tasks" in text
  rows = {row[0]: row for row in markdown_rows(text)}
  results = read_json(ablation["workdir"] / "m_s" / f"seed_{SEEDS[0]}" / "results.json")
  assert rows["M+S"] == [
      "M+S", f"{results['MAE']:.3f}", "0.732", f"{100 * results['Non0_acc_2']:.2f}", "85.06"]
  assert rows["MCER"][2] == "0.699"
  assert rows["MCER"][4] == "86.74"
  assert rows["M+S+C(mt,ma,mv)"][1:] == rows["MCER"][1:]


@pytest.mark.slow
def test_ablate_full_equals_resumed_seed_run(ablation, seed_runs):
  # Same config and seed; the seed run was stopped and resumed, so equal results
  # show that the tools' resume path changes nothing.
  ablated = read_json(ablation["workdir"] / "full" / f"seed_{SEEDS[0]}" / "results.json")
  seeded = read_json(seed_runs["workdir"] / f"seed_{SEEDS[0]}" / "results.json")
  assert ablated == seeded


def test_ablate_rejects_grid_key_override(tmp_path):
  result = run_tool([*tool("ablate"), "--config", "experiments/mosi.py", "--workdir", str(tmp_path),
                     "--config.model.discriminator=False"], timeout=120)
  assert result.returncode == 2
  assert "the ablation grid sets config.model.discriminator" in result.stderr


def test_ablate_rejects_unknown_entry(tmp_path):
  result = run_tool([*tool("ablate"), "--config", "experiments/mosi.py", "--workdir", str(tmp_path),
                     "--only", "full,no_such"], timeout=120)
  assert result.returncode == 1
  assert "unknown entries ['no_such']" in result.stderr


# case_study.


def train_split(mosi_real):
  return safe_pickle.load(mosi_real / "mmsa" / "unaligned_50.pkl")["train"]


@pytest.mark.slow
def test_case_study_default_rows_match_npz(seed_runs, workspace):
  run = seed_runs["workdir"] / f"seed_{SEEDS[0]}"
  result = run_tool([*tool("case_study"), str(run)], timeout=120)
  assert result.returncode == 0, result.stderr
  assert "after epoch 2" in result.stdout
  rows = markdown_rows(result.stdout)
  assert len(rows) == 5

  split = train_split(workspace["mosi_real"])
  ids = [str(i) for i in split["id"]]
  human = np.asarray(split["regression_labels"], np.float64)
  with np.load(run / "labels" / "epoch_002.npz") as stored:
    generated = {name: stored[name] for name in ("t", "a", "v", "mt", "ma", "mv")}
  largest = np.max([np.abs(generated[name] - human) for name in generated], axis=0)
  expected = sorted(range(len(ids)), key=lambda i: (-largest[i], i))[:5]
  assert [row[0] for row in rows] == [ids[i] for i in expected]
  for row, index in zip(rows, expected):
    assert row[1] == str(split["raw_text"][index]).strip()
    assert float(row[2]) == pytest.approx(human[index], abs=5e-4)
    for cell, name in zip(row[3:], ("t", "a", "v", "mt", "ma", "mv")):
      assert float(cell) == pytest.approx(float(generated[name][index]), abs=5e-4)


@pytest.mark.slow
def test_case_study_ids_and_epoch(seed_runs, workspace):
  run = seed_runs["workdir"] / f"seed_{SEEDS[0]}"
  split = train_split(workspace["mosi_real"])
  chosen = [str(split["id"][7]), str(split["id"][3])]
  result = run_tool([*tool("case_study"), str(run), "--ids", *chosen, "--epoch", "1"], timeout=120)
  assert result.returncode == 0, result.stderr
  rows = markdown_rows(result.stdout)
  assert [row[0] for row in rows] == chosen
  with np.load(run / "labels" / "epoch_001.npz") as stored:
    for row, index in zip(rows, (7, 3)):
      for cell, name in zip(row[3:], ("t", "a", "v", "mt", "ma", "mv")):
        assert float(cell) == pytest.approx(float(stored[name][index]), abs=5e-4)
        # Label updates start in epoch 2, so after epoch 1 every label is y_m.
        assert float(cell) == pytest.approx(float(split["regression_labels"][index]), abs=5e-4)


@pytest.mark.slow
def test_case_study_rejects_unknown_epoch_and_id(seed_runs):
  run = seed_runs["workdir"] / f"seed_{SEEDS[0]}"
  result = run_tool([*tool("case_study"), str(run), "--epoch", "9"], timeout=120)
  assert result.returncode == 1
  assert "epoch_009.npz: not found; saved epochs are [1, 2]" in result.stderr
  result = run_tool([*tool("case_study"), str(run), "--ids", "no_such_id"], timeout=120)
  assert result.returncode == 1
  assert "['no_such_id'] are not training samples" in result.stderr


def make_sims_release(mosi_real, folder):
  """Writes an MMSA-layout CH-SIMS file: the real MOSI samples, labels scaled to [-1, 1], with unimodal labels."""
  data = safe_pickle.load(mosi_real / "mmsa" / "unaligned_50.pkl")
  rng = np.random.default_rng(0)
  for split in data.values():
    labels = np.asarray(split["regression_labels"], np.float32) / 3
    split["regression_labels"] = labels
    for key in ("T", "A", "V"):
      split[f"regression_labels_{key}"] = np.clip(labels + rng.normal(0, 0.3, labels.shape), -1, 1).astype(np.float32)
  folder.mkdir()
  with open(folder / "unaligned_39.pkl", "wb") as stream:
    pickle.dump(data, stream)
  return data


def test_case_study_sims_correlations(tmp_path, mosi_real):
  data = make_sims_release(mosi_real, tmp_path / "sims")
  config = research.resolve_config(str(REPO / "experiments" / "sims.py"), [
      f"--config.data.manual_dir={tmp_path / 'sims'}", f"--config.data.data_dir={tmp_path / 'tfds'}",
      "--config.data.max_text_len=50", "--config.data.max_audio_len=50", "--config.data.max_vision_len=50",
      "--config.data.text_buckets=(50,)", *TINY])
  run = tmp_path / "run"
  (run / "labels").mkdir(parents=True)
  (run / "config.json").write_text(config.to_json_best_effort())
  train = data["train"]
  rng = np.random.default_rng(1)
  generated = {}
  for name, key in (("t", "T"), ("a", "A"), ("v", "V")):
    generated[name] = (0.5 * train[f"regression_labels_{key}"] + rng.normal(0, 0.2, len(train["id"]))).astype(np.float32)
  for name in ("mt", "ma", "mv"):
    generated[name] = rng.uniform(-1, 1, len(train["id"])).astype(np.float32)
  np.savez(run / "labels" / "epoch_003.npz", **generated)

  result = run_tool([*tool("case_study"), str(run), "--count", "3"], timeout=180)
  assert result.returncode == 0, result.stderr
  rows = markdown_rows(result.stdout)
  correlations = {row[0]: float(row[1]) for row in rows if row[0] in ("t", "a", "v")}
  for name, key in (("t", "T"), ("a", "A"), ("v", "V")):
    x = generated[name].astype(np.float64)
    y = np.asarray(train[f"regression_labels_{key}"], np.float64)
    n = len(x)
    expected = (n * np.sum(x * y) - np.sum(x) * np.sum(y)) / (
        math.sqrt(n * np.sum(x * x) - np.sum(x) ** 2) * math.sqrt(n * np.sum(y * y) - np.sum(y) ** 2))
    assert correlations[name] == pytest.approx(expected, abs=5e-5)
  table = [row for row in rows if len(row) > 2]
  assert len(table) == 3
  index = [str(i) for i in train["id"]].index(table[0][0])
  assert float(table[0][3]) == pytest.approx(float(train["regression_labels_T"][index]), abs=5e-4)


# report.


@pytest.mark.slow
def test_report_writes_valid_pngs(seed_runs):
  run = seed_runs["workdir"] / f"seed_{SEEDS[1]}"
  result = run_tool([*tool("report"), str(run)], timeout=180)
  assert result.returncode == 0, result.stderr
  report = (run / "report" / "report.md").read_text()
  for name in ("losses.png", "metrics.png", "test_predictions.png", "label_offsets.png"):
    path = run / "report" / name
    assert path.read_bytes()[:8] == PNG_SIGNATURE, name
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3, name
    assert pixels.shape[0] > 100, name
    assert pixels.shape[1] > 100, name
    assert pixels.std() > 0, name
    assert f"]({name})" in report, name


@pytest.mark.slow
def test_report_tables_match_outputs(seed_runs):
  run = seed_runs["workdir"] / f"seed_{SEEDS[1]}"
  result = run_tool([*tool("report"), str(run)], timeout=180)
  assert result.returncode == 0, result.stderr
  report = (run / "report" / "report.md").read_text()
  results = read_json(run / "results.json")
  rows = markdown_rows(report)
  assert rows[0][0] == f"{results['MAE']:.3f}"
  assert rows[0][1] == f"{results['Corr']:.3f}"
  offsets = {row[0]: row for row in rows if row[0] in ("t", "a", "v", "mt", "ma", "mv")}
  human = np.asarray([float(r["label"]) for r in read_csv_rows(run / "predictions.csv") if r["split"] == "train"])
  with np.load(run / "labels" / "epoch_002.npz") as stored:
    for name, row in offsets.items():
      difference = stored[name].astype(np.float64) - human
      assert float(row[1]) == pytest.approx(difference.mean(), abs=5e-4)
      assert float(row[2]) == pytest.approx(np.abs(difference).mean(), abs=5e-4)
  assert "checkpoint selected at epoch" in report


def test_report_rejects_missing_run(tmp_path):
  result = run_tool([*tool("report"), str(tmp_path)], timeout=120)
  assert result.returncode == 1
  assert "config.json: not found" in result.stderr
