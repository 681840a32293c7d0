"""Helpers of the research tools: training runs in a subprocess, run outputs, seed summaries.

`tools/run_seeds.py`, `tools/ablate.py`, `tools/case_study.py` and
`tools/report.py` share these. A run is `python -m mcer_jax.main` in its own
work directory, so a run these tools start is the same as one started by hand,
and it resumes in the same way. A run is finished when its `results.json`
exists.

Importing this module does not import JAX, so the tools resolve configs and
read outputs without JAX's start-up time; only `load_training_data` loads the
data layer.
"""

import csv
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

# MMSA's seeds, which papers of the field average over.
DEFAULT_SEEDS = (1111, 1112, 1113, 1114, 1115)
LABEL_FAMILIES = ("t", "a", "v", "mt", "ma", "mv")
UNIMODAL = ("t", "a", "v")
# Column order of result tables, as papers of the field print them (MOSI and
# MOSEI metrics, then CH-SIMS's); other metrics follow in name order.
METRIC_ORDER = (
    "MAE", "Corr", "Mult_acc_7", "Mult_acc_5", "Has0_acc_2", "Non0_acc_2", "Has0_F1_score", "Non0_F1_score",
    "Mult_acc_2", "Mult_acc_3", "F1_score",
)
EXIT_PREEMPTED = 143  # The exit status of `mcer_jax.main` stopped by SIGTERM.


class ResearchError(RuntimeError):
  """Invalid input to a research tool: a missing file, a bad override, a mismatched run."""


# Configs and overrides.


def override_key(argument: str) -> str:
  """Returns the config key of a `--config.key=value` or `--noconfig.key` argument."""
  for prefix in ("--config.", "--noconfig."):
    if argument.startswith(prefix):
      return argument[len(prefix):].split("=", 1)[0]
  raise ResearchError(
      f"unexpected argument {argument!r}: these tools pass on only config overrides of the form "
      "--config.key=value (for example --config.train.num_epochs=10)"
  )


def check_overrides(overrides: Sequence[str]) -> None:
  """Raises ResearchError unless every argument is a `--config.key=value` override."""
  for argument in overrides:
    override_key(argument)
    if argument.startswith("--config.") and "=" not in argument:
      raise ResearchError(
          f"{argument!r} has no value; write overrides as --config.key=value "
          "(an empty string is --config.key=)"
      )


def add_run_arguments(parser: Any, workdir_help: str) -> None:
  """Adds the arguments every multi-run tool takes: --config, --workdir and --jax-cache-dir."""
  parser.add_argument("--config", required=True, help="Experiment config file, e.g. experiments/mosi.py.")
  parser.add_argument("--workdir", required=True, help=workdir_help)
  parser.add_argument(
      "--jax-cache-dir", default=None,
      help="JAX compilation cache shared by the runs (default: $JAX_COMPILATION_CACHE_DIR, "
           "else WORKDIR/jax_cache); '' turns it off.")


def parse_with_overrides(parser: Any, argv: Sequence[str] | None) -> tuple[Any, list[str]]:
  """Parses a tool's own arguments and returns them with the `--config.key=value` overrides it passes on.

  An argument that is not an override exits through `parser.error`.
  """
  args, overrides = parser.parse_known_args(argv)
  try:
    check_overrides(overrides)
  except ResearchError as error:
    parser.error(str(error))
  return args, overrides


def resolve_config(config_path: str, overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """Returns the config `mcer_jax.main` builds from an experiment file and overrides.

  Args:
    config_path: an experiment file such as `experiments/mosi.py`.
    overrides: `--config.key=value` arguments, applied in order as the entry
      point applies them.

  Raises:
    ResearchError: the file is missing or an override names an unknown key or
      has a value of the wrong type.
  """
  from absl import flags
  from ml_collections import config_flags

  if not os.path.isfile(config_path):
    raise ResearchError(f"{config_path}: experiment config not found; pass a file such as experiments/mosi.py")
  check_overrides(overrides)
  argv = ["mcer_jax.main", f"--config={config_path}", *overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file(
      "config", None, "Experiment config.", flag_values=flag_values, lock_config=True, sys_argv=argv)
  try:
    flag_values(argv)
    config = flag_values.config
  except (AttributeError, KeyError) as error:
    raise ResearchError(
        f"{config_path}: an override names a key the config does not have ({error}); "
        "see mcer_jax/config.py for the keys"
    ) from error
  except flags.Error as error:
    raise ResearchError(f"{config_path}: invalid override: {error}") from error
  return config


def _plain(config: ml_collections.ConfigDict | Mapping[str, Any]) -> Any:
  """Converts a config to its JSON form, so tuples and lists compare equal."""
  if isinstance(config, ml_collections.ConfigDict):
    return json.loads(config.to_json_best_effort())
  return json.loads(json.dumps(config))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(tree, dict):
    return {prefix: tree}
  flat = {}
  for key, value in tree.items():
    flat.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
  return flat


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """Reads the resolved config a run wrote to `WORKDIR/config.json`."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise ResearchError(f"{path}: not found; WORKDIR must be the --workdir of a training run")
  with open(path, encoding="utf-8") as stream:
    try:
      return ml_collections.ConfigDict(json.load(stream))
    except json.JSONDecodeError as error:
      raise ResearchError(f"{path}: invalid JSON ({error})") from error


def config_differences(workdir: str, config: ml_collections.ConfigDict) -> list[str]:
  """Lists the keys whose value in `WORKDIR/config.json` differs from `config`; empty if none is saved."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    return []
  with open(path, encoding="utf-8") as stream:
    saved = _flatten(json.load(stream))
  requested = _flatten(_plain(config))
  differences = []
  for key in sorted(set(saved) | set(requested)):
    if saved.get(key) != requested.get(key):
      differences.append(f"{key}: run has {saved.get(key)!r}, requested {requested.get(key)!r}")
  return differences


def check_run_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Raises ResearchError when a run already in `workdir` used another config."""
  differences = config_differences(workdir, config)
  if differences:
    raise ResearchError(
        f"{os.path.join(workdir, 'config.json')}: this run was started with another config "
        f"({'; '.join(differences[:5])}{'; ...' if len(differences) > 5 else ''}). "
        "Use a new --workdir, or pass the same config and overrides as before."
    )


def parse_seeds(text: str) -> list[int]:
  """Parses a comma-separated list of integer seeds such as `1111,1112`."""
  seeds = []
  for part in text.split(","):
    part = part.strip()
    if not part:
      continue
    try:
      seeds.append(int(part))
    except ValueError:
      raise ResearchError(f"--seeds={text!r}: {part!r} is not an integer; pass e.g. --seeds 1111,1112") from None
  if not seeds:
    raise ResearchError(f"--seeds={text!r} names no seed; pass e.g. --seeds 1111,1112")
  if len(set(seeds)) != len(seeds):
    raise ResearchError(f"--seeds={text!r} names a seed twice")
  return seeds


# Run outputs.


def results_path(workdir: str) -> str:
  return os.path.join(workdir, "results.json")


def is_finished(workdir: str) -> bool:
  """True when the run in `workdir` has written its test results."""
  return os.path.isfile(results_path(workdir))


def read_results(workdir: str) -> dict[str, float]:
  """Reads `WORKDIR/results.json`: test metric name -> value."""
  path = results_path(workdir)
  if not os.path.isfile(path):
    raise ResearchError(f"{path}: not found; the run has not finished. Run it (again) to finish it.")
  with open(path, encoding="utf-8") as stream:
    try:
      results = json.load(stream)
    except json.JSONDecodeError as error:
      raise ResearchError(f"{path}: invalid JSON ({error}); delete it and run again") from error
  if not isinstance(results, dict) or not all(isinstance(v, (int, float)) for v in results.values()):
    raise ResearchError(f"{path}: expected an object of metric name -> number, found {results!r}")
  return {name: float(value) for name, value in results.items()}


def read_metrics_log(workdir: str) -> list[dict[str, Any]]:
  """Reads `WORKDIR/metrics.jsonl`, one dict per epoch; missing file: empty list."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  rows = []
  with open(path, encoding="utf-8") as stream:
    for number, line in enumerate(stream, start=1):
      line = line.strip()
      if not line:
        continue
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError as error:
        raise ResearchError(f"{path}, line {number}: invalid JSON ({error})") from error
  return rows


def label_epochs(workdir: str) -> list[int]:
  """Epochs with a saved `labels/epoch_XXX.npz`, in increasing order."""
  directory = os.path.join(workdir, "labels")
  if not os.path.isdir(directory):
    return []
  epochs = []
  for name in os.listdir(directory):
    if name.startswith("epoch_") and name.endswith(".npz") and name[6:-4].isdigit():
      epochs.append(int(name[6:-4]))
  return sorted(epochs)


def read_labels(workdir: str, epoch: int) -> dict[str, np.ndarray]:
  """Reads the generated labels of every training sample after `epoch`: family -> [num_train]."""
  path = os.path.join(workdir, "labels", f"epoch_{epoch:03d}.npz")
  if not os.path.isfile(path):
    available = label_epochs(workdir)
    raise ResearchError(
        f"{path}: not found; saved epochs are {available or 'none'} "
        "(label history is written when config.train.save_label_history is True)"
    )
  with np.load(path) as stored:
    return {name: np.asarray(stored[name]) for name in stored.files}


def read_predictions(workdir: str) -> dict[str, dict[str, list[str]]]:
  """Reads `WORKDIR/predictions.csv`: split -> column -> values as strings, rows in file order."""
  path = os.path.join(workdir, "predictions.csv")
  if not os.path.isfile(path):
    raise ResearchError(f"{path}: not found; it is written when the run finishes")
  tables: dict[str, dict[str, list[str]]] = {}
  with open(path, newline="", encoding="utf-8") as stream:
    reader = csv.DictReader(stream)
    if reader.fieldnames is None or "split" not in reader.fieldnames:
      raise ResearchError(f"{path}: expected a header with a 'split' column, found {reader.fieldnames}")
    for row in reader:
      table = tables.setdefault(row["split"], {})
      for name, value in row.items():
        if name != "split":
          table.setdefault(name, []).append(value)
  return tables


def float_column(tables: Mapping[str, Mapping[str, list[str]]], split: str, column: str, source: str) -> np.ndarray:
  """Returns one numeric column of `read_predictions`' tables; `source` names the file for errors."""
  if split not in tables or column not in tables[split]:
    raise ResearchError(f"{source}: no column {column!r} for split {split!r}")
  try:
    return np.asarray([float(value) for value in tables[split][column]], np.float64)
  except ValueError as error:
    raise ResearchError(f"{source}: column {column!r} of split {split!r} is not numeric ({error})") from error


@dataclasses.dataclass
class TrainingData:
  """Ids, transcripts and human labels of the training split, in row order."""

  ids: list[str]
  texts: list[str]
  human: np.ndarray  # y_m, [N]
  human_unimodal: dict[str, np.ndarray]  # s -> [N]; empty unless the release has them (CH-SIMS).


def load_training_data(config: ml_collections.ConfigDict) -> TrainingData:
  """Reloads the training split of a run's data with `mcer_jax.data.load_splits`."""
  from mcer_jax import data

  splits, info = data.load_splits(config)
  source = splits["train"]
  samples = [source[i] for i in range(len(source))]
  human = np.asarray([float(sample["labels"]) for sample in samples], np.float64)
  unimodal = {}
  if info.has_unimodal_labels:
    for s in UNIMODAL:
      unimodal[s] = np.asarray([float(sample[f"labels_{s}"]) for sample in samples], np.float64)
  return TrainingData(list(info.ids["train"]), list(info.raw_texts["train"]), human, unimodal)


# Summaries and tables.


def is_percentage(metric: str) -> bool:
  """True for accuracies and F1 scores, which tables show in percent as papers do."""
  return "acc" in metric.lower() or "f1" in metric.lower()


def format_metric(metric: str, value: float) -> str:
  """Formats a metric as papers print it: accuracies and F1 in percent with 2 decimals, others with 3."""
  if value is None or not math.isfinite(value):
    return "nan"
  return f"{100 * value:.2f}" if is_percentage(metric) else f"{value:.3f}"


def format_mean_std(metric: str, mean: float, std: float | None) -> str:
  """`mean ± std` in the metric's format; the mean alone when std is None (one run)."""
  if std is None:
    return format_metric(metric, mean)
  scale = 100.0 if is_percentage(metric) else 1.0
  digits = 2 if is_percentage(metric) else 3
  return f"{format_metric(metric, mean)} ± {scale * std:.{digits}f}"


def order_metrics(names) -> list[str]:
  """Sorts metric names into `METRIC_ORDER`, unknown names last in name order."""
  known = [name for name in METRIC_ORDER if name in names]
  return known + sorted(name for name in names if name not in METRIC_ORDER)


def summarize(results: Mapping[Any, Mapping[str, float]]) -> tuple[list[str], dict[str, float], dict[str, float | None]]:
  """Returns (metric names, mean per metric, sample std per metric) over runs.

  The standard deviation uses ddof=1 (the sample's), and is None for a
  single run.

  Args:
    results: run name -> that run's `results.json`; every run must have the
      same metrics.
  """
  if not results:
    raise ResearchError("no finished run to summarise")
  runs = list(results)
  metrics = order_metrics(results[runs[0]])
  for run in runs[1:]:
    if set(results[run]) != set(metrics):
      raise ResearchError(
          f"runs {runs[0]} and {run} report different metrics ({sorted(metrics)} vs "
          f"{sorted(results[run])}); summarise runs of one dataset only"
      )
  means, stds = {}, {}
  for metric in metrics:
    values = np.asarray([results[run][metric] for run in runs], np.float64)
    means[metric] = float(np.mean(values))
    stds[metric] = float(np.std(values, ddof=1)) if len(values) > 1 else None
  return metrics, means, stds


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """Returns a Markdown table; `|` inside cells is escaped."""
  def cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")

  lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def _csv_cell(value: Any) -> Any:
  if value is None:
    return ""
  if isinstance(value, float):
    return repr(value)
  return value


def write_csv(path: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
  """Writes a CSV file; floats keep full precision (repr)."""
  temporary = f"{path}.tmp-{os.getpid()}"
  with open(temporary, "w", newline="", encoding="utf-8") as stream:
    writer = csv.writer(stream)
    writer.writerow(header)
    for row in rows:
      writer.writerow([_csv_cell(value) for value in row])
  os.replace(temporary, path)


def write_text(path: str, text: str) -> None:
  """Writes a text file atomically."""
  temporary = f"{path}.tmp-{os.getpid()}"
  with open(temporary, "w", encoding="utf-8") as stream:
    stream.write(text)
  os.replace(temporary, path)


def seed_table(results: Mapping[int, Mapping[str, float]]) -> tuple[list[str], list[list[Any]], list[list[Any]]]:
  """Tables of a group of seeds: (header, CSV rows, Markdown rows).

  CSV rows hold raw values as in `results.json` (fractions for accuracies):
  one row per seed, then `mean` and `std`. Markdown rows use the papers'
  format and end with a `mean ± std` row.
  """
  metrics, means, stds = summarize({seed: results[seed] for seed in results})
  header = ["run", *metrics]
  csv_rows: list[list[Any]] = [[f"seed_{seed}", *(results[seed][m] for m in metrics)] for seed in results]
  csv_rows.append(["mean", *(means[m] for m in metrics)])
  csv_rows.append(["std", *(stds[m] for m in metrics)])
  md_rows: list[list[Any]] = [[f"seed {seed}", *(format_metric(m, results[seed][m]) for m in metrics)] for seed in results]
  md_rows.append([f"mean ± std ({len(results)} seeds)", *(format_mean_std(m, means[m], stds[m]) for m in metrics)])
  return header, csv_rows, md_rows


def write_seed_summary(directory: str, results: Mapping[int, Mapping[str, float]], title: str, command: str) -> str:
  """Writes `DIR/seeds.csv` and `DIR/seeds.md` for the finished seeds of one config; returns the Markdown."""
  header, csv_rows, md_rows = seed_table(results)
  write_csv(os.path.join(directory, "seeds.csv"), header, csv_rows)
  text = [
      f"# {title}\n",
      f"Command: `{command}`\n",
      "Test metrics of each seed's best checkpoint (selected on the validation split). "
      "Accuracies and F1 scores are in percent; the spread is the sample standard deviation "
      "(ddof=1) over seeds.\n",
      markdown_table(header, md_rows),
  ]
  markdown = "\n".join(text)
  write_text(os.path.join(directory, "seeds.md"), markdown)
  return markdown


# Training runs.


def subprocess_env(jax_cache_dir: str) -> dict[str, str]:
  """Builds the environment of a training subprocess; a non-empty `jax_cache_dir` turns on JAX's compilation cache."""
  env = dict(os.environ)
  if jax_cache_dir:
    os.makedirs(jax_cache_dir, exist_ok=True)
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.abspath(jax_cache_dir)
  return env


def default_jax_cache_dir(workdir: str) -> str:
  """`$JAX_COMPILATION_CACHE_DIR` when set, else `WORKDIR/jax_cache`."""
  return os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(workdir, "jax_cache")


class Interrupted(RuntimeError):
  """The user or the system stopped a tool; the run in progress saved a checkpoint."""


def _raise_interrupted(signum, frame):
  del frame
  raise Interrupted(f"received signal {signum}")


def install_signal_handlers() -> None:
  """Makes SIGTERM stop a tool as Ctrl-C does, so the training run saves a checkpoint first."""
  signal.signal(signal.SIGTERM, _raise_interrupted)


def _epoch_summary(row: Mapping[str, Any], metric: str) -> str:
  parts = [f"epoch {row.get('epoch')}"]
  if "train/loss/total" in row:
    parts.append(f"train loss {row['train/loss/total']:.4f}")
  if f"valid/{metric}" in row:
    parts.append(f"valid {metric} {row[f'valid/{metric}']:.4f}")
  return ", ".join(parts)


def _log_tail(path: str, lines: int = 25) -> str:
  try:
    with open(path, encoding="utf-8", errors="replace") as stream:
      return "".join(stream.readlines()[-lines:])
  except OSError:
    return ""


def run_training(
    config_path: str,
    workdir: str,
    overrides: Sequence[str],
    *,
    num_epochs: int,
    selection_metric: str,
    jax_cache_dir: str = "",
    prefix: str = "",
    poll_seconds: float = 1.0,
) -> dict[str, float]:
  """Runs `python -m mcer_jax.main` in `workdir` and returns its test results.

  The subprocess writes its output to `WORKDIR/train.log`; this prints one
  line per finished epoch. A run stopped half-way resumes from its last
  checkpoint when called again. Ctrl-C or SIGTERM (raised here as
  `Interrupted`) sends SIGTERM to the run, which saves a checkpoint and exits.

  Args:
    config_path: the experiment file.
    workdir: the run's work directory.
    overrides: `--config.key=value` arguments for the entry point.
    num_epochs: `config.train.num_epochs`, for progress lines.
    selection_metric: the validation metric shown in progress lines.
    jax_cache_dir: JAX's persistent compilation cache; "" leaves it off.
    prefix: printed before every progress line.
    poll_seconds: how often `metrics.jsonl` is checked for new epochs.

  Raises:
    ResearchError: the run failed (the message contains the end of its log).
    Interrupted: the run was stopped; run again to resume.
  """
  os.makedirs(workdir, exist_ok=True)
  log_path = os.path.join(workdir, "train.log")
  command = [sys.executable, "-m", "mcer_jax.main", f"--config={config_path}", f"--workdir={workdir}", *overrides]
  seen = len(read_metrics_log(workdir))
  if seen:
    print(f"{prefix}resuming after epoch {seen}/{num_epochs}", flush=True)
  started = time.monotonic()
  with open(log_path, "a", encoding="utf-8") as log:
    log.write(f"\n$ {' '.join(command)}\n")
    log.flush()
    # A session of its own: Ctrl-C reaches this tool only, which then sends
    # SIGTERM so the run saves a checkpoint before it exits.
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=subprocess_env(jax_cache_dir), start_new_session=True)
    try:
      while process.poll() is None:
        time.sleep(poll_seconds)
        seen = _print_new_epochs(workdir, seen, num_epochs, selection_metric, prefix)
    except (KeyboardInterrupt, Interrupted) as stop:
      print(f"{prefix}stopping: the run saves a checkpoint first ...", flush=True)
      process.send_signal(signal.SIGTERM)
      process.wait()
      raise Interrupted(f"{workdir}: stopped; run the same command again to resume") from stop
  _print_new_epochs(workdir, seen, num_epochs, selection_metric, prefix)
  if process.returncode == EXIT_PREEMPTED:
    raise Interrupted(f"{workdir}: the run was stopped by SIGTERM; run the same command again to resume")
  if process.returncode != 0 or not is_finished(workdir):
    raise ResearchError(
        f"{workdir}: training failed with exit status {process.returncode}. End of {log_path}:\n"
        f"{_log_tail(log_path)}"
    )
  print(f"{prefix}finished in {time.monotonic() - started:.0f} s", flush=True)
  return read_results(workdir)


def _print_new_epochs(workdir: str, seen: int, num_epochs: int, metric: str, prefix: str) -> int:
  try:
    rows = read_metrics_log(workdir)
  except ResearchError:
    return seen  # A line being written right now; read it on the next poll.
  for row in rows[seen:]:
    print(f"{prefix}{_epoch_summary(row, metric)} (of {num_epochs})", flush=True)
  return max(seen, len(rows))


def run_seed_group(
    config_path: str,
    directory: str,
    seeds: Sequence[int],
    overrides: Sequence[str],
    *,
    jax_cache_dir: str,
    prefix: str = "",
) -> dict[int, dict[str, float]]:
  """Trains the config once per seed in `DIRECTORY/seed_<s>`, skipping finished seeds.

  Every seed's config is resolved and checked against a run already in its
  directory before anything trains, so a wrong override fails at once.

  Returns:
    seed -> test results, in the order of `seeds`.
  """
  configs = {}
  for seed in seeds:
    run_overrides = [*overrides, f"--config.seed={seed}"]
    config = resolve_config(config_path, run_overrides)
    check_run_config(os.path.join(directory, f"seed_{seed}"), config)
    configs[seed] = (config, run_overrides)

  results = {}
  for number, seed in enumerate(seeds, start=1):
    workdir = os.path.join(directory, f"seed_{seed}")
    config, run_overrides = configs[seed]
    tag = f"{prefix}[{number}/{len(seeds)}] seed {seed}: "
    if is_finished(workdir):
      print(f"{tag}finished before, skipped ({results_path(workdir)})", flush=True)
      results[seed] = read_results(workdir)
      continue
    print(f"{tag}training in {workdir} (log: {os.path.join(workdir, 'train.log')})", flush=True)
    results[seed] = run_training(
        config_path,
        workdir,
        run_overrides,
        num_epochs=int(config.train.num_epochs),
        selection_metric=str(config.train.selection_metric),
        jax_cache_dir=jax_cache_dir,
        prefix=tag,
    )
  return results


def run_tool(main: Any) -> None:
  """Runs a tool's `main(argv)` and exits with its status, turning stops and errors into one-line messages."""
  try:
    sys.exit(main(sys.argv[1:]))
  except Interrupted as stop:
    print(f"Stopped: {stop}", file=sys.stderr)
    sys.exit(EXIT_PREEMPTED)
  except KeyboardInterrupt:
    print("Stopped.", file=sys.stderr)
    sys.exit(130)
  except ResearchError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)
