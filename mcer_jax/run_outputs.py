"""Files a training run writes into its work directory.

`metrics.jsonl` (one line per epoch), `results.json` (test metrics of the best
checkpoint), `predictions.csv`, TensorBoard event files (through tensorboardX,
so TensorFlow is not needed), the generated labels of every epoch under
`labels/`, and the resolved `config.json`. Only JAX process 0 writes.
"""

import csv
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np


def is_writer() -> bool:
  """True on the one process that writes logs and results."""
  return jax.process_index() == 0


def _atomic_write_text(path: str, text: str) -> None:
  """Writes `text` so a reader never sees a half-written file."""
  temporary = f"{path}.tmp-{os.getpid()}"
  with open(temporary, "w", encoding="utf-8") as stream:
    stream.write(text)
    stream.flush()
    os.fsync(stream.fileno())
  os.replace(temporary, path)


def write_json(path: str, value: Any) -> None:
  """Writes `value` as indented JSON, atomically."""
  _atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes the resolved config as `config.json`."""
  _atomic_write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2) + "\n")


def read_metrics_log(workdir: str) -> list[dict[str, Any]]:
  """Reads `metrics.jsonl`; a missing file is an empty history.

  A last line that is not valid JSON is dropped with a warning, because a run
  killed while appending leaves one. An invalid line before it raises
  ValueError.
  """
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8", errors="replace") as stream:
    lines = [(number, line.strip()) for number, line in enumerate(stream, start=1) if line.strip()]
  rows = []
  for position, (number, line) in enumerate(lines):
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError as error:
      if position < len(lines) - 1:
        raise ValueError(f"{path}, line {number}: invalid JSON ({error}); fix or delete that line") from error
      logging.warning("%s, line %d: dropped a partial last line, which a killed run left.", path, number)
  return rows


def truncate_metrics_log(workdir: str, last_epoch: int) -> None:
  """Drops epochs after `last_epoch`, which a killed run logged but never saved."""
  rows = [row for row in read_metrics_log(workdir) if row["epoch"] <= last_epoch]
  text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
  _atomic_write_text(os.path.join(workdir, "metrics.jsonl"), text)


def append_metrics_log(workdir: str, row: Mapping[str, Any]) -> None:
  """Appends one epoch's line to `metrics.jsonl`."""
  with open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8") as stream:
    stream.write(json.dumps(dict(row), sort_keys=True) + "\n")
    stream.flush()
    os.fsync(stream.fileno())


class TensorBoard:
  """TensorBoard scalars through tensorboardX; a no-op on other processes."""

  def __init__(self, workdir: str):
    self._writer = None
    if is_writer():
      from tensorboardX import SummaryWriter  # Imported late: it is slow to import.

      self._writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    if self._writer is None:
      return
    for name, value in values.items():
      self._writer.add_scalar(name, value, step)
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def save_label_history(workdir: str, epoch: int, generated: Mapping[str, np.ndarray]) -> None:
  """Saves the generated labels of every training sample after `epoch`."""
  directory = os.path.join(workdir, "labels")
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, f"epoch_{epoch:03d}.npz")
  temporary = path + ".tmp.npz"
  np.savez(temporary, **{name: np.asarray(values) for name, values in generated.items()})
  os.replace(temporary, path)


def write_predictions(
    path: str,
    rows_by_split: Mapping[str, Mapping[str, Sequence[Any]]],
) -> None:
  """Writes a CSV with one row per sample of each split.

  Args:
    path: the CSV file.
    rows_by_split: split name to columns (`id`, `label`, `pred_<head>`,
      `generated_<family>` ...), each a sequence with one value per sample.
  """
  columns = ["split"]
  for table in rows_by_split.values():
    for name in table:
      if name not in columns:
        columns.append(name)
  temporary = f"{path}.tmp-{os.getpid()}"
  with open(temporary, "w", newline="", encoding="utf-8") as stream:
    writer = csv.writer(stream)
    writer.writerow(columns)
    for split, table in rows_by_split.items():
      count = len(next(iter(table.values())))
      for row in range(count):
        values = [split]
        for name in columns[1:]:
          if name not in table:
            values.append("")
            continue
          value = table[name][row]
          values.append(f"{value:.6f}" if isinstance(value, (float, np.floating)) else value)
        writer.writerow(values)
  os.replace(temporary, path)
