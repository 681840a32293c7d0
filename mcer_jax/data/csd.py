"""Reader for CMU-MultimodalSDK computational sequences (`*.csd`, HDF5).

A computational sequence file contains one root group (the sequence's name) with
`data/<entry>/features` [T, d] and `data/<entry>/intervals` [T, 2] (start and
end in seconds). An entry is a whole video (`video_id`) or, in files the SDK
has aligned to the labels, one utterance (`video_id[k]`).

The folder needs four sequences, found by file name (case-insensitive):
  * labels: the name contains "label" (e.g. CMU_MOSI_Opinion_Labels.csd), one
    row per utterance. Column 0 is read as the sentiment score, which is the
    only column of MOSI's label file.
  * words: the name contains "word" but not "vector" (CMU_MOSI_TimestampedWords.csd).
  * audio: the first of COVAREP, then openSMILE files.
  * vision: the first of Facet 4.2, Facet 4.1, other Facet, OpenFace 2, other OpenFace files.

An utterance `video[k]` is row k of the label entry `video` (or the label
entry `video[k]` itself). Its text is the words whose interval midpoint lies
inside the utterance's interval, without the silence token "sp". Its audio and
vision are the frames whose midpoint lies inside it, as stored (no averaging).
When a modality has an entry named after the utterance, all its frames are used.

Splits come from `splits.json` in the folder, `{"train": [video ids],
"valid": [...], "test": [...]}` ("dev" is accepted for "valid"); without it,
from the standard folds of an installed CMU-MultimodalSDK (`mmsdk`) for MOSI and
MOSEI. Utterances of videos in no split are dropped with a logged count.
"""

import contextlib
import glob
import importlib
import json
import os
import re
from typing import Any

import h5py
import numpy as np
from absl import logging

from mcer_jax.data import tokenization
from mcer_jax.data.errors import DataError
from mcer_jax.data.normalize import SPLITS, ReadOptions, as_numeric, check_splits, normalize_split

SPLITS_FILE = "splits.json"
SILENCE_TOKENS = ("sp", "")
# Keywords of file names by preference; the first keyword that matches picks the file.
AUDIO_KEYWORDS = ("covarep", "opensmile")
VISION_KEYWORDS = ("facet_42", "facet_41", "facet", "openface_2", "openface")
# Modules of CMU-MultimodalSDK that define standard_{train,valid,test}_fold.
STANDARD_FOLD_MODULES = {
    "mosi": "mmsdk.mmdatasdk.dataset.standard_datasets.CMU_MOSI.cmu_mosi_std_folds",
    "mosei": "mmsdk.mmdatasdk.dataset.standard_datasets.CMU_MOSEI.cmu_mosei_std_folds",
}
_UTTERANCE_KEY = re.compile(r"^(.*)\[(\d+)\]$")


@contextlib.contextmanager
def _hdf5_errors(path: str, what: str):
  """Turns the errors h5py raises on a damaged file into a DataError naming the file and `what`."""
  try:
    yield
  except DataError:
    raise
  except (OSError, RuntimeError, KeyError, ValueError, TypeError, AttributeError) as error:
    raise DataError(
        f"{path}: cannot read {what} ({type(error).__name__}: {error}); the file is damaged or not a "
        "computational sequence. Copy or download it again."
    ) from error


class _Sequence:
  """One open computational sequence: its entries' features and intervals."""

  def __init__(self, path: str):
    self.path = path
    try:
      self._file = h5py.File(path, "r")
    except OSError as error:
      raise DataError(f"{path}: cannot open as HDF5 ({error}); the file is truncated or not a computational sequence") from error
    with _hdf5_errors(path, "the root group"):
      roots = list(self._file.keys())
      if not roots or not isinstance(self._file[roots[0]], h5py.Group) or not isinstance(self._file[roots[0]].get("data"), h5py.Group):
        raise DataError(f"{path}: expected a root group with a 'data' group (<root>/data/<video>/features); found {roots}")
      self.data = self._file[roots[0]]["data"]
    self._cached: tuple[str, tuple[np.ndarray, np.ndarray]] | None = None

  def close(self):
    self._file.close()

  def __contains__(self, key: str) -> bool:
    with _hdf5_errors(self.path, f"entry '{key}'"):
      return key in self.data

  def keys(self) -> list[str]:
    with _hdf5_errors(self.path, "the entry names"):
      return list(self.data.keys())

  def read(self, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns (features [T, d], intervals [T, 2]) of an entry, keeping the last one read in memory.

    Utterances come grouped by video, so the cache reads each video's frames once.
    """
    if self._cached is not None and self._cached[0] == key:
      return self._cached[1]
    with _hdf5_errors(self.path, f"entry '{key}'"):
      entry = self.data[key]
      if not isinstance(entry, h5py.Group):
        raise DataError(f"{self.path}, entry '{key}': expected a group with 'features' and 'intervals', found a {type(entry).__name__}")
      for name in ("features", "intervals"):
        if name not in entry:
          raise DataError(f"{self.path}, entry '{key}': missing dataset '{name}'; found {list(entry.keys())}")
      features = np.asarray(entry["features"][()])
      intervals = as_numeric(entry["intervals"][()], np.float64, f"{self.path}, entry '{key}', intervals")
    if features.ndim == 1:
      features = features[:, None]
    if features.ndim != 2 or features.shape[1] == 0:
      raise DataError(f"{self.path}, entry '{key}': expected features [frames, columns] with at least one column, found {features.shape}")
    if intervals.ndim != 2 or intervals.shape[1] != 2 or intervals.shape[0] != features.shape[0]:
      raise DataError(
          f"{self.path}, entry '{key}': expected intervals [{features.shape[0]}, 2] for features "
          f"{features.shape}, found {intervals.shape}"
      )
    self._cached = (key, (features, intervals))
    return features, intervals


def _pick(paths: list[str], keywords: tuple[str, ...], what: str, folder: str) -> str:
  for keyword in keywords:
    matches = [path for path in paths if keyword in os.path.basename(path).lower()]
    if len(matches) == 1:
      return matches[0]
    if len(matches) > 1:
      raise DataError(f"{folder}: several {what} sequences match '{keyword}': {[os.path.basename(p) for p in matches]}; keep one.")
  raise DataError(
      f"{folder}: no {what} computational sequence found; expected a .csd file whose name contains one of "
      f"{list(keywords)}. Found {[os.path.basename(p) for p in paths]}."
  )


def find_sequences(manual_dir: str) -> dict[str, str]:
  """Returns the paths of the labels, words, audio and vision sequences in `manual_dir`."""
  paths = sorted(glob.glob(os.path.join(manual_dir, "*.csd")))
  words = [path for path in paths if "word" in os.path.basename(path).lower() and "vector" not in os.path.basename(path).lower()]
  return {
      "labels": _pick(paths, ("label",), "label", manual_dir),
      "words": _pick(words, ("word",), "word (TimestampedWords)", manual_dir),
      "audio": _pick(paths, AUDIO_KEYWORDS, "audio", manual_dir),
      "vision": _pick(paths, VISION_KEYWORDS, "vision", manual_dir),
  }


def _video_splits(manual_dir: str, dataset: str) -> dict[str, list[str]]:
  """Returns split -> video ids from splits.json, or from mmsdk's standard folds."""
  path = os.path.join(manual_dir, SPLITS_FILE)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as stream:
      try:
        folds = json.load(stream)
      except json.JSONDecodeError as error:
        raise DataError(f"{path}: invalid JSON ({error})") from error
    if not isinstance(folds, dict):
      raise DataError(f"{path}: expected an object mapping split names to lists of video ids")
    if "valid" not in folds and "dev" in folds:
      folds["valid"] = folds.pop("dev")
    missing = [split for split in SPLITS if split not in folds]
    if missing:
      raise DataError(f"{path}: missing split(s) {missing}; found {sorted(folds)}")
    for split in SPLITS:
      if not isinstance(folds[split], list) or not all(isinstance(video, str) for video in folds[split]):
        raise DataError(f"{path}, split '{split}': expected a list of video id strings")
    logging.info("Splits of %s from %s.", manual_dir, path)
    return {split: list(folds[split]) for split in SPLITS}
  module_name = STANDARD_FOLD_MODULES.get(dataset)
  if module_name is not None:
    try:
      module = importlib.import_module(module_name)
    except ImportError:
      module = None
    if module is not None:
      logging.info("Splits of %s from the CMU-MultimodalSDK standard folds (%s).", manual_dir, module_name)
      return {split: list(getattr(module, f"standard_{split}_fold")) for split in SPLITS}
  raise DataError(
      f"{manual_dir}: no {SPLITS_FILE} found. The csd layout needs {SPLITS_FILE}, "
      '{"train": [video ids], "valid": [...], "test": [...]}, or, for MOSI and MOSEI, the '
      "CMU-MultimodalSDK package (mmsdk) installed for its standard folds."
  )


def _utterances(labels: _Sequence) -> list[tuple[str, str, float, float, float]]:
  """Returns (utterance id, video id, start, end, sentiment) for every labelled utterance."""
  # NOTE: label files with several columns (MOSEI's stores emotions too) are
  # assumed to have the sentiment in column 0; no such file was available to check.
  out = []
  for key in labels.keys():
    features, intervals = labels.read(key)
    features = as_numeric(features, np.float64, f"{labels.path}, entry '{key}', features")
    match = _UTTERANCE_KEY.match(key)
    if match:
      if features.shape[0] != 1:
        raise DataError(f"{labels.path}, entry '{key}': expected one label row for an utterance entry, found {features.shape[0]}")
      out.append((key, match.group(1), intervals[0, 0], intervals[0, 1], float(features[0, 0])))
    else:
      for row in range(features.shape[0]):
        out.append((f"{key}[{row}]", key, intervals[row, 0], intervals[row, 1], float(features[row, 0])))
  return out


def _slice(sequence: _Sequence, utterance: str, video: str, start: float, end: float) -> np.ndarray | None:
  """Returns the rows of `utterance` (its own entry, or the video's rows inside [start, end]); None when absent."""
  if utterance in sequence:
    return sequence.read(utterance)[0]
  if video not in sequence:
    return None
  features, intervals = sequence.read(video)
  middle = intervals.mean(axis=1)
  return features[(middle >= start) & (middle <= end)]


def _decode_words(rows: np.ndarray) -> list[str]:
  words = []
  for value in rows.reshape(-1):
    word = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
    if word.strip() not in SILENCE_TOKENS:
      words.append(word.strip())
  return words


def read_csd(manual_dir: str, options: ReadOptions) -> dict[str, dict[str, np.ndarray]]:
  """Reads utterance-level split arrays from the computational sequences in `manual_dir`."""
  paths = find_sequences(manual_dir)
  logging.info("Computational sequences of %s: %s", manual_dir, {k: os.path.basename(v) for k, v in paths.items()})
  folds = _video_splits(manual_dir, options.dataset)
  split_of: dict[str, str] = {}
  for split, videos in folds.items():
    for video in videos:
      if video in split_of and split_of[video] != split:
        raise DataError(f"{manual_dir}: video '{video}' is in both the {split_of[video]} and the {split} split")
      split_of[video] = split

  encoder = tokenization.WordPieceEncoder(options.vocab_file)
  sequences = {name: _Sequence(path) for name, path in paths.items()}
  try:
    collected: dict[str, dict[str, list[Any]]] = {
        split: {"id": [], "raw_text": [], "labels": [], "audio": [], "vision": []} for split in SPLITS
    }
    unassigned = 0
    missing = {"words": 0, "audio": 0, "vision": 0}
    for utterance, video, start, end, label in _utterances(sequences["labels"]):
      split = split_of.get(video)
      if split is None:
        unassigned += 1
        continue
      rows = {name: _slice(sequences[name], utterance, video, start, end) for name in ("words", "audio", "vision")}
      absent = [name for name, value in rows.items() if value is None]
      for name in absent:
        missing[name] += 1
      if absent:
        continue
      fields = collected[split]
      fields["id"].append(utterance)
      fields["raw_text"].append(" ".join(_decode_words(rows["words"])))
      fields["labels"].append(label)
      fields["audio"].append(as_numeric(rows["audio"], np.float32, f"{paths['audio']}, entry '{utterance}'"))
      fields["vision"].append(as_numeric(rows["vision"], np.float32, f"{paths['vision']}, entry '{utterance}'"))
  finally:
    for sequence in sequences.values():
      sequence.close()
  if unassigned:
    logging.warning("%s: dropped %d labelled utterances whose video is in no split.", manual_dir, unassigned)
  for name, count in missing.items():
    if count:
      logging.warning("%s: dropped %d utterances whose video has no entry in %s.", manual_dir, count, paths[name])

  dropped = [f"{count} for lack of an entry in {paths[name]}" for name, count in missing.items() if count]
  splits = {}
  for split, fields in collected.items():
    if not fields["id"]:
      raise DataError(
          f"{manual_dir}: the {split} split has no labelled utterances (utterances dropped: {', '.join(dropped) or 'none'}). "
          f"Check {SPLITS_FILE} against the label file's video ids, and the files named here."
      )
    token_arrays, truncated = encoder.encode(fields["raw_text"], options.max_text_len)
    if truncated:
      logging.info("%s, split '%s': truncated %d transcripts to %d tokens.", manual_dir, split, truncated, options.max_text_len)
    splits[split] = normalize_split({**fields, **token_arrays}, options, manual_dir, split)
  check_splits(splits, manual_dir)
  logging.info("Read %s (csd): %s samples.", manual_dir, {split: len(arrays["id"]) for split, arrays in splits.items()})
  return splits
