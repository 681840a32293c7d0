r"""Prints a case study of generated labels: text, human label, unimodal and cross-modal labels.

  python tools/case_study.py WORKDIR [--ids ID ...] [--epoch N] [--count 5]

A run saves the generated labels of its training samples after each epoch
(`WORKDIR/labels/epoch_XXX.npz`). For the chosen samples, the tool prints the
transcript, the human multimodal label y_m, the unimodal labels (t, a, v) and
the cross-modal labels (mt, ma, mv), as in the case study of MCER's paper. Without --ids it picks the --count samples whose generated
labels lie farthest from y_m. The epoch defaults to the last one saved.

Ids and transcripts come from reloading the run's data with its
`config.json` (prepared data is cached, so this is quick). For CH-SIMS, whose
release has human unimodal labels, the table shows them too, and the tool
prints the Pearson correlation between generated and human labels of t, a
and v over all training samples.
"""

import argparse
import dataclasses
import os
import sys

import numpy as np

from mcer_jax import research

UNIMODAL = research.UNIMODAL


@dataclasses.dataclass
class CaseStudy:
  """The rows and correlations the tool prints."""

  workdir: str
  epoch: int
  families: list[str]  # Generated label families present, in research.LABEL_FAMILIES order.
  rows: list[dict]  # id, text, human, each family, and human_<s> when present.
  correlations: dict[str, float]  # s -> Pearson r of generated vs human labels (CH-SIMS only).
  label_range: float


def largest_offsets(generated: dict[str, np.ndarray], human: np.ndarray, count: int) -> list[int]:
  """Rows whose largest |generated - human| over all families is biggest, biggest first (ties: lower row)."""
  offsets = np.max(np.stack([np.abs(values - human) for values in generated.values()]), axis=0)
  order = np.lexsort((np.arange(len(human)), -offsets))
  return [int(row) for row in order[:count]]


def pearson(x: np.ndarray, y: np.ndarray) -> float:
  """Pearson correlation; NaN when either vector is constant."""
  x = np.asarray(x, np.float64) - np.mean(x)
  y = np.asarray(y, np.float64) - np.mean(y)
  denominator = np.sqrt(np.sum(x * x) * np.sum(y * y))
  return float(np.sum(x * y) / denominator) if denominator > 0 else float("nan")


def check_same_data(workdir: str, train: research.TrainingData, num_rows: int) -> None:
  """Raises ResearchError unless the reloaded training split matches the run's outputs."""
  if num_rows != len(train.ids):
    raise research.ResearchError(
        f"{workdir}/labels: {num_rows} training samples, but the reloaded training split has "
        f"{len(train.ids)}. The data in config.data.manual_dir changed since this run; point "
        "--manual-dir at the data the run used."
    )
  path = os.path.join(workdir, "predictions.csv")
  if os.path.isfile(path):
    tables = research.read_predictions(workdir)
    saved = tables.get("train", {}).get("id", [])
    if saved and list(saved) != train.ids:
      raise research.ResearchError(
          f"{path}: the training ids differ from those of the reloaded data; point --manual-dir "
          "at the data the run used."
      )


def build_case_study(
    workdir: str,
    ids: list[str] | None = None,
    epoch: int | None = None,
    count: int = 5,
    train: research.TrainingData | None = None,
    manual_dir: str = "",
    data_dir: str = "",
) -> CaseStudy:
  """Collects the case-study rows of a run.

  Args:
    workdir: the run's work directory.
    ids: training sample ids to show; None picks `count` with the largest offsets.
    epoch: the epoch whose labels to read; None reads the last saved one.
    count: how many samples to pick when `ids` is None.
    train: the training split; None reloads it with the run's config.
    manual_dir: replaces config.data.manual_dir when the release has moved.
    data_dir: replaces config.data.data_dir when the prepared data has moved.
  """
  config = research.load_run_config(workdir)
  if manual_dir:
    config.data.manual_dir = manual_dir
  if data_dir:
    config.data.data_dir = data_dir
  epochs = research.label_epochs(workdir)
  if not epochs:
    raise research.ResearchError(
        f"{workdir}/labels: no epoch_XXX.npz files; the run saves them when "
        "config.train.save_label_history is True")
  epoch = epochs[-1] if epoch is None else epoch
  generated = research.read_labels(workdir, epoch)
  families = [f for f in research.LABEL_FAMILIES if f in generated]
  generated = {f: np.asarray(generated[f], np.float64) for f in families}
  if not families:
    raise research.ResearchError(f"{workdir}/labels/epoch_{epoch:03d}.npz: no generated label families in it")
  if train is None:
    train = research.load_training_data(config)
  check_same_data(workdir, train, len(next(iter(generated.values()))))

  if ids:
    row_of = {sample_id: row for row, sample_id in enumerate(train.ids)}
    missing = [sample_id for sample_id in ids if sample_id not in row_of]
    if missing:
      raise research.ResearchError(
          f"--ids: {missing} are not training samples of this run (labels are generated for "
          f"training samples only); examples of valid ids: {train.ids[:3]}")
    rows = [row_of[sample_id] for sample_id in ids]
  else:
    rows = largest_offsets(generated, train.human, count)

  table = []
  for row in rows:
    entry = {"id": train.ids[row], "text": train.texts[row], "human": float(train.human[row])}
    for s, values in train.human_unimodal.items():
      entry[f"human_{s}"] = float(values[row])
    for family in families:
      entry[family] = float(generated[family][row])
    table.append(entry)
  correlations = {
      s: pearson(generated[s], train.human_unimodal[s])
      for s in UNIMODAL if s in generated and s in train.human_unimodal
  }
  return CaseStudy(workdir, epoch, families, table, correlations, float(config.data.label_range))


def format_case_study(study: CaseStudy) -> str:
  """Formats the case study as Markdown: a table, then the correlations when there are human unimodal labels."""
  has_unimodal = any(key.startswith("human_") for row in study.rows for key in row)
  header = ["id", "text", "human (m)"]
  if has_unimodal:
    header += [f"human ({s})" for s in UNIMODAL]
  header += study.families
  rows = []
  for row in study.rows:
    cells = [row["id"], row["text"], f"{row['human']:.3f}"]
    if has_unimodal:
      cells += [f"{row[f'human_{s}']:.3f}" for s in UNIMODAL]
    cells += [f"{row[family]:.3f}" for family in study.families]
    rows.append(cells)
  text = [
      f"Case study of {study.workdir}, generated labels after epoch {study.epoch} "
      f"(training samples; labels lie in [-{study.label_range:g}, {study.label_range:g}]):\n",
      research.markdown_table(header, rows),
  ]
  if study.correlations:
    text.append("Pearson correlation of generated and human unimodal labels over all training samples:\n")
    text.append(research.markdown_table(
        ["modality", "r"], [[s, f"{r:.4f}" if np.isfinite(r) else "undefined (constant labels)"]
                            for s, r in study.correlations.items()]))
  return "\n".join(text)


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
  parser.add_argument("workdir", help="The --workdir of a training run.")
  parser.add_argument("--ids", nargs="+", default=None, help="Training sample ids to show.")
  parser.add_argument("--epoch", type=int, default=None, help="Epoch whose labels to show (default: the last saved).")
  parser.add_argument("--count", type=int, default=5, help="Samples to pick when --ids is not given (default 5).")
  parser.add_argument("--manual-dir", default="", help="The run's release folder, if it moved since training.")
  parser.add_argument("--data-dir", default="", help="The run's prepared TFDS folder, if it moved since training.")
  args = parser.parse_args(argv)
  if args.count < 1:
    parser.error(f"--count must be at least 1, found {args.count}")
  print(f"Reloading the training data of {args.workdir} ...", file=sys.stderr, flush=True)
  study = build_case_study(
      args.workdir, args.ids, args.epoch, args.count, manual_dir=args.manual_dir, data_dir=args.data_dir)
  print(format_case_study(study))
  return 0


if __name__ == "__main__":
  research.run_tool(main)
