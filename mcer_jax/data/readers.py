"""Readers for the released files of CMU-MOSI, CMU-MOSEI and CH-SIMS.

Three layouts are read, each into the split arrays of docs/interfaces.md
(`{"train" | "valid" | "test": {field: array [N, ...]}}`):

  * mmsa: MMSA's processed pickles (`aligned_50.pkl`, `unaligned_50.pkl`, ...),
    one dict of splits with `text_bert` [N, 3, L] (ids, mask, segments, stored
    as float) or `text` features [N, L, d].
  * misa: MISA's `train.pkl`, `dev.pkl`, `test.pkl`, lists of
    `((word_ids, visual [T, d_v], acoustic [T, d_a], words), [[label]], segment_id)`.
    The words are tokenised with the text encoder's vocab.txt.
  * csd: CMU-MultimodalSDK computational sequences (`*.csd`, HDF5); see
    `mcer_jax.data.csd`.

`read_manual_dir` detects the layout of a folder and calls the right reader.
"""

import dataclasses
import glob
import os
from typing import Any

import numpy as np
from absl import logging

from mcer_jax.data import csd
from mcer_jax.data import safe_pickle
from mcer_jax.data import tokenization
from mcer_jax.data.errors import DataError
from mcer_jax.data.normalize import SPLITS, ReadOptions, as_numeric, check_splits, normalize_split

LAYOUTS = ("mmsa", "misa", "csd")
# MISA's file for each split; the validation split is called "dev" there.
MISA_FILES = {"train": ("train.pkl",), "valid": ("dev.pkl", "valid.pkl"), "test": ("test.pkl",)}
_MISA_NAMES = {name for names in MISA_FILES.values() for name in names}
_MMSA_UNIMODAL_LABELS = {"labels_t": "regression_labels_T", "labels_a": "regression_labels_A", "labels_v": "regression_labels_V"}

__all__ = ["LAYOUTS", "ReadOptions", "Layout", "resolve_layout", "read_mmsa", "read_misa", "read_manual_dir"]


@dataclasses.dataclass(frozen=True)
class Layout:
  """A detected layout and the files its reader uses."""

  name: str  # mmsa | misa | csd
  files: tuple[str, ...]


def _require(container: dict[str, Any], key: str, source: str, split: str) -> Any:
  if key not in container:
    raise DataError(f"{source}, split '{split}': missing key '{key}'; found keys {sorted(container)}")
  return container[key]


def _numeric_array(container: dict[str, Any], key: str, source: str, split: str) -> np.ndarray:
  return as_numeric(_require(container, key, source, split), np.float32, f"{source}, split '{split}', field '{key}'")


def read_mmsa(path: str, options: ReadOptions) -> dict[str, dict[str, np.ndarray]]:
  """Reads an MMSA processed pickle (`aligned_50.pkl`, `unaligned_50.pkl`, ...).

  Text comes from `text_bert` [N, 3, L] when present, else from the `text`
  features [N, L, d]. `audio_lengths`/`vision_lengths` may be lists, arrays or
  absent. CH-SIMS's `regression_labels_T/_A/_V` become `labels_t/_a/_v`.
  """
  data = safe_pickle.load(path)
  if not isinstance(data, dict):
    raise DataError(f"{path}: expected a dict of splits {list(SPLITS)}, found {type(data).__name__}")
  missing = [split for split in SPLITS if split not in data]
  if missing:
    raise DataError(f"{path}: missing split(s) {missing}; found keys {sorted(map(str, data))}")
  splits = {}
  for split in SPLITS:
    fields = data[split]
    if not isinstance(fields, dict):
      raise DataError(f"{path}, split '{split}': expected a dict of arrays, found {type(fields).__name__}")
    raw: dict[str, Any] = {
        "id": _require(fields, "id", path, split),
        "raw_text": _require(fields, "raw_text", path, split),
        "labels": _require(fields, "regression_labels", path, split),
        "audio": _numeric_array(fields, "audio", path, split),
        "vision": _numeric_array(fields, "vision", path, split),
        "audio_lengths": fields.get("audio_lengths"),
        "vision_lengths": fields.get("vision_lengths"),
    }
    if "text_bert" in fields:
      text_bert = _numeric_array(fields, "text_bert", path, split)
      if text_bert.ndim != 3 or text_bert.shape[1] != 3:
        raise DataError(f"{path}, split '{split}', field 'text_bert': expected [N, 3, L], found shape {text_bert.shape}")
      raw["text_ids"], raw["text_mask"], raw["text_segment"] = text_bert[:, 0], text_bert[:, 1], text_bert[:, 2]
    elif "text" in fields:
      raw["text_features"] = _numeric_array(fields, "text", path, split)
    else:
      raise DataError(f"{path}, split '{split}': missing key 'text_bert' (token ids) or 'text' (features); found {sorted(fields)}")
    for key, mmsa_key in _MMSA_UNIMODAL_LABELS.items():
      raw[key] = fields.get(mmsa_key)
    splits[split] = normalize_split(raw, options, path, split)
  check_splits(splits, path)
  logging.info("Read %s: %s samples.", path, {split: len(arrays["id"]) for split, arrays in splits.items()})
  return splits


def _misa_record(record: Any, path: str, index: int) -> tuple[np.ndarray, np.ndarray, list[str], float, str]:
  """Unpacks `((word_ids, visual, acoustic, words), label, segment_id)`; returns (visual, acoustic, words, label, id)."""
  try:
    (_, visual, acoustic, words), label, segment = record
  except (TypeError, ValueError) as error:
    raise DataError(
        f"{path}, record {index}: expected ((word_ids, visual, acoustic, words), label, segment_id), "
        f"found {type(record).__name__} ({error})"
    ) from error
  segment = segment.decode("utf-8", errors="replace") if isinstance(segment, bytes) else str(segment)
  where = f"{path}, record {index} ('{segment}')"
  label = as_numeric(label, np.float64, f"{where}, label")
  if label.size != 1:
    raise DataError(f"{where}: expected one label, found shape {label.shape}")
  if isinstance(words, (str, bytes)) or not hasattr(words, "__iter__"):
    raise DataError(f"{where}: expected a list of words, found {type(words).__name__}")
  try:
    words = [word.decode("utf-8", errors="replace") if isinstance(word, bytes) else str(word) for word in words]
  except TypeError as error:  # A 0-d numpy array has __iter__ but cannot be iterated.
    raise DataError(f"{where}: expected a list of words, found {type(words).__name__} ({error})") from error
  visual = as_numeric(visual, np.float32, f"{where}, visual")
  acoustic = as_numeric(acoustic, np.float32, f"{where}, acoustic")
  return visual, acoustic, words, float(label.reshape(-1)[0]), segment


def _read_misa_split(path: str, split: str, encoder: tokenization.WordPieceEncoder, options: ReadOptions) -> dict[str, np.ndarray]:
  records = safe_pickle.load(path)
  if not isinstance(records, (list, tuple)):
    raise DataError(f"{path}: expected a list of samples, found {type(records).__name__}")
  visual, acoustic, texts, labels, ids = [], [], [], [], []
  for index, record in enumerate(records):
    sample_visual, sample_acoustic, words, label, segment = _misa_record(record, path, index)
    visual.append(sample_visual)
    acoustic.append(sample_acoustic)
    texts.append(" ".join(words))
    labels.append(label)
    ids.append(segment)
  token_arrays, truncated = encoder.encode(texts, options.max_text_len)
  if truncated:
    logging.info("%s: truncated %d transcripts to %d tokens.", path, truncated, options.max_text_len)
  raw = {"id": ids, "raw_text": texts, "labels": labels, "audio": acoustic, "vision": visual, **token_arrays}
  return normalize_split(raw, options, path, split)


def read_misa(manual_dir: str, options: ReadOptions) -> dict[str, dict[str, np.ndarray]]:
  """Reads MISA / CMU-SDK style `train.pkl`, `dev.pkl`, `test.pkl` from `manual_dir`.

  Transcripts are the words joined by spaces, tokenised with the WordPiece
  vocabulary `options.vocab_file` as [CLS] ... [SEP]; `dev` becomes `valid`.
  """
  encoder = tokenization.WordPieceEncoder(options.vocab_file)
  splits = {}
  for split in SPLITS:
    path = _misa_path(manual_dir, split)
    if path is None:
      raise DataError(
          f"{manual_dir}: missing the {split} split; expected one of {list(MISA_FILES[split])} beside "
          f"{[names[0] for names in MISA_FILES.values()]}"
      )
    splits[split] = _read_misa_split(path, split, encoder, options)
  check_splits(splits, manual_dir)
  logging.info("Read %s (misa): %s samples.", manual_dir, {split: len(arrays["id"]) for split, arrays in splits.items()})
  return splits


def _misa_path(manual_dir: str, split: str) -> str | None:
  for name in MISA_FILES[split]:
    path = os.path.join(manual_dir, name)
    if os.path.isfile(path):
      return path
  return None


def _mmsa_candidates(manual_dir: str) -> list[str]:
  return sorted(path for path in glob.glob(os.path.join(manual_dir, "*.pkl")) if os.path.basename(path) not in _MISA_NAMES)


def resolve_layout(manual_dir: str, layout: str = "auto", mmsa_file: str = "") -> Layout:
  """Detects (for layout="auto") or checks the layout of `manual_dir` and lists the files it uses.

  Detection: MISA when `train.pkl`, `dev.pkl` or `test.pkl` exists; MMSA when `mmsa_file`
  is set or another `*.pkl` exists; csd when `*.csd` files exist. More than one
  match, or none, raises DataError.
  """
  manual_dir = os.fspath(manual_dir)
  if not os.path.isdir(manual_dir):
    raise DataError(f"manual_dir '{manual_dir}' is not a folder; set config.data.manual_dir to the folder of the released files.")
  if layout not in ("auto",) + LAYOUTS:
    raise DataError(f"unknown layout '{layout}'; expected one of auto, {', '.join(LAYOUTS)}")

  found: dict[str, Layout] = {}
  misa_paths = [path for path in (_misa_path(manual_dir, split) for split in SPLITS) if path]
  if misa_paths:
    found["misa"] = Layout("misa", tuple(misa_paths))
  if mmsa_file:
    path = os.path.join(manual_dir, mmsa_file)
    if not os.path.isfile(path):
      raise DataError(f"config.data.mmsa_file '{mmsa_file}' not found in {manual_dir}; found {sorted(os.listdir(manual_dir))}")
    found["mmsa"] = Layout("mmsa", (path,))
  else:
    candidates = _mmsa_candidates(manual_dir)
    if candidates:
      found["mmsa"] = Layout("mmsa", tuple(candidates))
  csd_paths = sorted(glob.glob(os.path.join(manual_dir, "*.csd")))
  if csd_paths:
    found["csd"] = Layout("csd", tuple(csd_paths))

  if layout == "auto":
    if not found:
      raise DataError(
          f"{manual_dir}: no known layout found. Looked for MMSA pickles (*.pkl other than train/dev/test.pkl, "
          "e.g. unaligned_50.pkl), MISA pickles (train.pkl, dev.pkl, test.pkl) and CMU-MultimodalSDK "
          f"computational sequences (*.csd). The folder contains {sorted(os.listdir(manual_dir))[:20]}."
      )
    if len(found) > 1:
      raise DataError(
          f"{manual_dir}: files of several layouts found ({', '.join(sorted(found))}); set config.data.layout "
          "to the one to read."
      )
    layout = next(iter(found))
  if layout not in found:
    raise DataError(f"{manual_dir}: config.data.layout is '{layout}', but no files of that layout were found")
  result = found[layout]
  if layout == "mmsa" and len(result.files) > 1:
    names = [os.path.basename(path) for path in result.files]
    raise DataError(f"{manual_dir}: several MMSA pickles {names}; set config.data.mmsa_file to the one to read.")
  return result


def read_manual_dir(manual_dir: str, layout: str = "auto", *, options: ReadOptions, mmsa_file: str = "") -> dict[str, dict[str, np.ndarray]]:
  """Reads the released files in `manual_dir` into split arrays, detecting the layout when it is "auto"."""
  resolved = resolve_layout(manual_dir, layout, mmsa_file)
  logging.info("Reading %s as the %s layout.", manual_dir, resolved.name)
  if resolved.name == "mmsa":
    return read_mmsa(resolved.files[0], options)
  if resolved.name == "misa":
    return read_misa(manual_dir, options)
  return csd.read_csd(manual_dir, options)
