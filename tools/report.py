r"""Writes a report of one training run: plots of losses, metrics, predictions and generated labels.

  python tools/report.py WORKDIR [--max-box-epochs 25]

Writes into `WORKDIR/report/` (matplotlib, Agg backend, no display needed):
  losses.png            every training loss term per epoch (train/loss/* of metrics.jsonl)
  metrics.png           every validation metric per epoch, the training metric dashed,
                        the selected (best) epoch marked
  test_predictions.png  predicted vs human score on the test split (predictions.csv)
  label_offsets.png     generated minus human label of every training sample, as box
                        plots per epoch for t, a, v, mt, ma, mv (labels/epoch_XXX.npz)
  report.md             the test results table and the pictures

The run need not be finished: without `results.json` and `predictions.csv`
the report leaves out the results table and the test plot, and reloads the
training data (with the run's `config.json`) for the human labels of the
offsets. Running the tool again rewrites the report.
"""

import argparse
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

from mcer_jax import research  # noqa: E402

DPI = 90
# Panel order of the loss plot: the total, the task losses, then the regularisers.
LOSS_ORDER = ("total", "task", "task_m", "task_t", "task_a", "task_v", "task_mt", "task_ma", "task_mv",
              "kl_m", "kl_avl", "discriminator", "mutual_information")


def _grid(count: int, columns: int) -> tuple[plt.Figure, list[plt.Axes]]:
  rows = max(1, math.ceil(count / columns))
  columns = min(columns, max(count, 1))
  figure, axes = plt.subplots(rows, columns, figsize=(3.3 * columns, 2.5 * rows), squeeze=False)
  flat = list(axes.ravel())
  for axis in flat[count:]:
    axis.set_visible(False)
  return figure, flat[:count]


def _label_epoch_axis(axis: plt.Axes) -> None:
  axis.set_xlabel("epoch", fontsize=8)
  axis.xaxis.set_major_locator(MaxNLocator(integer=True))
  axis.tick_params(labelsize=7)
  axis.grid(alpha=0.3)


def _save(figure: plt.Figure, path: str) -> str:
  figure.tight_layout()
  figure.savefig(path, dpi=DPI)
  plt.close(figure)
  print(f"wrote {path}", flush=True)
  return path


def best_epoch(history: list[dict], metric: str, mode: str, start_step: int = 0) -> int | None:
  """Returns the epoch the run selected, as the training loop chooses.

  That is the first epoch with the best validation metric among those that
  end at step `start_step` or later, or the last epoch if none does.
  """
  last_step = max((row.get("step", 0) for row in history), default=0)
  start_step = min(start_step, last_step)
  best, chosen = None, None
  for row in history:
    if start_step and row.get("step", start_step) < start_step:
      continue
    value = row.get(f"valid/{metric}")
    if value is None or not math.isfinite(value):
      continue
    if best is None or (value < best if mode == "min" else value > best):
      best, chosen = value, int(row["epoch"])
  return chosen


def plot_losses(history: list[dict], path: str) -> str:
  """Plots one panel per loss term against the epoch."""
  terms = {key[len("train/loss/"):] for row in history for key in row if key.startswith("train/loss/")}
  names = [f"train/loss/{t}" for t in LOSS_ORDER if t in terms]
  names += [f"train/loss/{t}" for t in sorted(terms - set(LOSS_ORDER))]
  figure, axes = _grid(len(names), 4)
  epochs = [row["epoch"] for row in history]
  for axis, name in zip(axes, names):
    axis.plot(epochs, [row.get(name, np.nan) for row in history], marker="o", markersize=3)
    axis.set_title(name[len("train/loss/"):], fontsize=9)
    _label_epoch_axis(axis)
  figure.suptitle("Training loss terms (mean over the epoch's steps)", fontsize=10)
  return _save(figure, path)


def plot_metrics(history: list[dict], path: str, selected: int | None) -> str:
  """Plots one panel per validation metric, with the training metric dashed and the selected epoch marked."""
  names = research.order_metrics({key[len("valid/"):] for row in history for key in row if key.startswith("valid/")})
  figure, axes = _grid(len(names), 4)
  epochs = [row["epoch"] for row in history]
  for axis, name in zip(axes, names):
    axis.plot(epochs, [row.get(f"valid/{name}", np.nan) for row in history], marker="o", markersize=3, label="valid")
    axis.plot(epochs, [row.get(f"train/{name}", np.nan) for row in history], linestyle="--", label="train")
    if selected is not None:
      axis.axvline(selected, color="grey", linestyle=":", linewidth=1)
    axis.set_title(name, fontsize=9)
    _label_epoch_axis(axis)
  if axes:
    axes[0].legend(fontsize=7)
  note = f"; dotted: selected epoch {selected}" if selected is not None else ""
  figure.suptitle(f"Metrics per epoch (solid: validation, dashed: training{note})", fontsize=10)
  return _save(figure, path)


def plot_test_predictions(labels: np.ndarray, predictions: np.ndarray, label_range: float, path: str) -> str:
  """Scatter of predicted vs human test scores with the identity line."""
  figure, axis = plt.subplots(figsize=(4.2, 4.0))
  axis.scatter(labels, predictions, s=12, alpha=0.6)
  axis.plot([-label_range, label_range], [-label_range, label_range], color="grey", linestyle="--", linewidth=1)
  axis.set_xlim(-label_range * 1.05, label_range * 1.05)
  axis.set_ylim(-label_range * 1.05, label_range * 1.05)
  axis.set_xlabel("human label y_m")
  axis.set_ylabel("prediction")
  mae = float(np.mean(np.abs(predictions - labels)))
  corr = float(np.corrcoef(predictions, labels)[0, 1]) if len(labels) > 1 else float("nan")
  axis.set_title(f"Test split, {len(labels)} samples: MAE {mae:.3f}, r {corr:.3f}", fontsize=9)
  axis.grid(alpha=0.3)
  return _save(figure, path)


def spread_epochs(epochs: list[int], maximum: int) -> list[int]:
  """At most `maximum` of `epochs`, evenly spread, always with the first and the last."""
  if len(epochs) <= maximum:
    return list(epochs)
  positions = np.unique(np.round(np.linspace(0, len(epochs) - 1, maximum)).astype(int))
  return [epochs[i] for i in positions]


def label_offsets(workdir: str, epochs: list[int], human: np.ndarray) -> dict[str, dict[int, np.ndarray]]:
  """Returns the generated minus the human label of every training sample: family -> epoch -> [N]."""
  offsets: dict[str, dict[int, np.ndarray]] = {}
  for epoch in epochs:
    generated = research.read_labels(workdir, epoch)
    for family in research.LABEL_FAMILIES:
      if family not in generated:
        continue
      values = np.asarray(generated[family], np.float64)
      if values.shape != human.shape:
        raise research.ResearchError(
            f"{workdir}/labels/epoch_{epoch:03d}.npz: '{family}' has shape {values.shape}, but "
            f"the training split has {human.shape[0]} samples")
      offsets.setdefault(family, {})[epoch] = values - human
  return offsets


def plot_label_offsets(offsets: dict[str, dict[int, np.ndarray]], path: str) -> str:
  """Box plots of the label offsets per epoch, one panel per family."""
  families = [f for f in research.LABEL_FAMILIES if f in offsets]
  figure, axes = _grid(len(families), 3)
  for axis, family in zip(axes, families):
    epochs = sorted(offsets[family])
    axis.boxplot([offsets[family][e] for e in epochs], positions=range(len(epochs)), widths=0.6,
                 showfliers=True, flierprops={"markersize": 2})
    step = max(1, len(epochs) // 10)
    axis.set_xticks(range(0, len(epochs), step), [str(e) for e in epochs[::step]])
    axis.axhline(0.0, color="grey", linewidth=0.8)
    axis.set_title(f"{family}: generated - human", fontsize=9)
    axis.set_xlabel("epoch", fontsize=8)
    axis.tick_params(labelsize=7)
    axis.grid(alpha=0.3, axis="y")
  figure.suptitle("Offsets of the generated labels from y_m over the training samples", fontsize=10)
  return _save(figure, path)


def write_report(workdir: str, max_box_epochs: int = 25) -> str:
  """Writes `WORKDIR/report/` and returns the path of report.md."""
  config = research.load_run_config(workdir)
  history = research.read_metrics_log(workdir)
  if not history:
    raise research.ResearchError(f"{workdir}/metrics.jsonl: not found or empty; the run has not finished an epoch yet")
  out = os.path.join(workdir, "report")
  os.makedirs(out, exist_ok=True)
  metric, mode = str(config.train.selection_metric), str(config.train.selection_mode)
  selected = best_epoch(history, metric, mode, int(config.train.get("selection_start_step", 0)))
  pictures = []  # (file name, heading, caption)

  plot_losses(history, os.path.join(out, "losses.png"))
  pictures.append(("losses.png", "Training losses", "Every term of the loss, mean over each epoch's steps."))
  plot_metrics(history, os.path.join(out, "metrics.png"), selected)
  pictures.append(("metrics.png", "Metrics per epoch",
                   f"Validation (solid) and training (dashed) metrics; the dotted line is the epoch "
                   f"selected by validation {metric} ({mode})."))

  finished = research.is_finished(workdir)
  predictions_path = os.path.join(workdir, "predictions.csv")
  human = None
  if os.path.isfile(predictions_path):
    tables = research.read_predictions(workdir)
    test_labels = research.float_column(tables, "test", "label", predictions_path)
    test_predictions = research.float_column(tables, "test", "pred_m", predictions_path)
    plot_test_predictions(test_labels, test_predictions, float(config.data.label_range),
                          os.path.join(out, "test_predictions.png"))
    pictures.append(("test_predictions.png", "Test predictions",
                     "Multimodal prediction of the selected checkpoint against the human label; "
                     "the dashed line is a perfect prediction."))
    human = research.float_column(tables, "train", "label", predictions_path)

  offsets_table = []
  epochs = research.label_epochs(workdir)
  if epochs:
    if human is None:
      print("no predictions.csv: reloading the training data for the human labels ...", flush=True)
      human = research.load_training_data(config).human
    plotted_epochs = spread_epochs(epochs, max_box_epochs)
    offsets = label_offsets(workdir, plotted_epochs, human)
    plot_label_offsets(offsets, os.path.join(out, "label_offsets.png"))
    plotted_note = "" if len(plotted_epochs) == len(epochs) else f" ({len(plotted_epochs)} of {len(epochs)} epochs shown)"
    pictures.append(("label_offsets.png", "Generated label offsets",
                     f"Generated label minus y_m for every training sample, per epoch{plotted_note}. "
                     "After epoch 1 the labels still equal y_m, because label updates start in epoch 2."))
    last = plotted_epochs[-1]
    for family in research.LABEL_FAMILIES:
      if family in offsets:
        values = offsets[family][last]
        offsets_table.append([family, f"{np.mean(values):+.3f}", f"{np.mean(np.abs(values)):.3f}",
                              f"{np.std(values):.3f}", f"{np.max(np.abs(values)):.3f}"])

  lines = [
      f"# Run report: {os.path.basename(os.path.abspath(workdir))}\n",
      f"Data `{config.data.name}`, seed {config.seed}, {len(history)} epochs trained of "
      f"{config.train.num_epochs}; checkpoint selected at epoch {selected} by validation {metric} ({mode}).\n",
  ]
  if finished:
    results = research.read_results(workdir)
    names = research.order_metrics(results)
    lines.append("## Test results of the selected checkpoint\n")
    lines.append("Accuracies and F1 scores in percent.\n")
    lines.append(research.markdown_table(names, [[research.format_metric(n, results[n]) for n in names]]))
  else:
    lines.append("The run has not finished: there is no results.json yet.\n")
  for name, heading, caption in pictures:
    lines.append(f"## {heading}\n")
    lines.append(f"![{heading}]({name})\n")
    lines.append(f"{caption}\n")
    if name == "label_offsets.png" and offsets_table:
      lines.append(f"Offsets after epoch {last} (generated - y_m over all training samples):\n")
      lines.append(research.markdown_table(["family", "mean", "mean |offset|", "std", "max |offset|"], offsets_table))
  path = os.path.join(out, "report.md")
  research.write_text(path, "\n".join(lines))
  print(f"wrote {path}", flush=True)
  return path


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
  parser.add_argument("workdir", help="The --workdir of a training run.")
  parser.add_argument("--max-box-epochs", type=int, default=25,
                      help="Maximum number of epochs in the label offset plot, evenly spread (default 25).")
  args = parser.parse_args(argv)
  if args.max_box_epochs < 2:
    parser.error(f"--max-box-epochs must be at least 2, found {args.max_box_epochs}")
  write_report(args.workdir, args.max_box_epochs)
  return 0


if __name__ == "__main__":
  research.run_tool(main)
