"""Checks a split's arrays and brings them to the shapes of docs/interfaces.md.

Every reader collects a split's fields as found in the release and hands them
to `normalize_split`, so the repairs and errors below are the same for every
layout:
  * NaN and inf features become 0 and are counted (MMSA replaces COVAREP's
    -inf by 0); `strict_features=True` raises instead.
  * A sequence of zero valid frames is given one frame of zeros, as MMSA
    clamps lengths to at least 1, and the count is logged.
  * Missing lengths are inferred as the position of the last non-zero frame
    plus one, which keeps interior zero frames and left padding.
  * Sequences longer than the configured maximum are truncated (logged), and
    frames past a sample's length are set to 0.
  * Labels outside [-label_range, label_range], NaN labels, duplicate ids and
    mismatched field lengths raise `DataError`.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging

from mcer_jax.data.errors import DataError

SPLITS = ("train", "valid", "test")
TEXT_ID_KEYS = ("text_ids", "text_mask", "text_segment")
UNIMODAL_LABEL_KEYS = ("labels_t", "labels_a", "labels_v")
# Label values may differ from the range bound by float32 rounding.
_LABEL_TOLERANCE = 1e-4


@dataclasses.dataclass(frozen=True)
class ReadOptions:
  """Settings that shape the split arrays a reader returns."""

  max_text_len: int = 50
  max_audio_len: int = 50
  max_vision_len: int = 50
  label_range: float = 3.0
  strict_features: bool = False  # True: NaN or inf features raise instead of becoming 0.
  vocab_file: str = ""  # WordPiece vocab.txt; layouts that store words need it.
  dataset: str = "mosi"  # Selects the CMU-MultimodalSDK standard folds of the csd layout.

  def __post_init__(self):
    for name in ("max_text_len", "max_audio_len", "max_vision_len"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be at least 1, found {getattr(self, name)}")
    if self.max_text_len < 2:
      raise ValueError(f"max_text_len must be at least 2 to hold [CLS] and [SEP], found {self.max_text_len}")
    if not self.label_range > 0:
      raise ValueError(f"label_range must be positive, found {self.label_range}")


def _where(source: str, split: str, field: str | None = None, sample_id: str | None = None) -> str:
  """Formats the location of a problem for messages."""
  parts = [source, f"split '{split}'"]
  if field is not None:
    parts.append(f"field '{field}'")
  if sample_id is not None:
    parts.append(f"sample '{sample_id}'")
  return ", ".join(parts)


def as_numeric(values: Any, dtype: Any, where: str, kinds: str = "biuf") -> np.ndarray:
  """Converts `values` to a numeric array of `dtype`, or raises DataError.

  Booleans, integers and floats are converted. Text, complex numbers, ragged
  nested lists and other objects raise, because converting them would parse
  strings or drop imaginary parts without a word.

  Args:
    values: an array, a (nested) list or a number.
    dtype: the numpy dtype to return.
    where: the file, split and field, for messages.
    kinds: the numpy dtype kinds admitted (b bool, i and u integers, f floats).
  """
  try:
    array = np.asarray(values)
  except (ValueError, TypeError) as error:
    raise DataError(f"{where}: expected a numeric array, found values numpy cannot stack ({error})") from error
  if array.dtype == object:
    if any(item is None or isinstance(item, (str, bytes, complex, np.complexfloating)) for item in array.reshape(-1)):
      raise DataError(f"{where}: expected numbers, found None, text or complex values in an object array")
    try:
      array = array.astype(np.float64)
    except (ValueError, TypeError) as error:
      raise DataError(f"{where}: expected numbers, found an object array that is not numeric ({error})") from error
  if array.dtype.kind not in kinds:
    raise DataError(f"{where}: expected numbers, found dtype {array.dtype}; store the field as a numeric array")
  with np.errstate(over="ignore"):  # Overflow to inf is counted and repaired by the callers.
    return array.astype(dtype, copy=False)


def _as_strings(values: Any, source: str, split: str, field: str) -> np.ndarray:
  """Converts ids or transcripts (str, bytes or numpy strings) to a str array [N]."""
  out = []
  try:
    array = np.asarray(values, dtype=object)
  except (ValueError, TypeError) as error:
    raise DataError(f"{_where(source, split, field)}: expected a 1-D list of strings ({error})") from error
  for value in array.reshape(-1):
    if isinstance(value, bytes):
      value = value.decode("utf-8", errors="replace")
    elif not isinstance(value, str):
      value = str(value)
    out.append(value)
  if array.ndim != 1:
    raise DataError(f"{_where(source, split, field)}: expected a 1-D list of strings, found shape {array.shape}")
  return np.asarray(out, dtype=object).astype(str) if out else np.zeros([0], str)


def _check_labels(labels: Any, ids: np.ndarray, options: ReadOptions, source: str, split: str, field: str) -> np.ndarray:
  """Returns float32 [N] labels after checking they are finite and inside the label range."""
  values = as_numeric(labels, np.float64, _where(source, split, field))
  try:
    values = values.reshape(len(ids), -1)
  except ValueError as error:
    raise DataError(f"{_where(source, split, field)}: expected one number per sample ({error})") from error
  if values.shape[1] != 1:
    raise DataError(f"{_where(source, split, field)}: expected one label per sample, found shape {np.shape(labels)}")
  values = values[:, 0]
  bad = np.flatnonzero(~np.isfinite(values) | (np.abs(values) > options.label_range + _LABEL_TOLERANCE))
  if bad.size:
    first = int(bad[0])
    raise DataError(
        f"{_where(source, split, field, ids[first])}: label {values[first]} is outside "
        f"[-{options.label_range}, {options.label_range}] ({bad.size} such labels in this split). "
        "Check config.data.label_range (3 for MOSI and MOSEI, 1 for CH-SIMS) or fix the file."
    )
  return values.astype(np.float32)


def _clean_non_finite(array: np.ndarray, ids: np.ndarray, options: ReadOptions, source: str, split: str, field: str) -> np.ndarray:
  """Replaces NaN and inf by 0 with a logged count, or raises when strict_features is set."""
  finite = np.isfinite(array)
  if finite.all():
    return array
  per_sample = (~finite).reshape(len(array), -1).sum(axis=1)
  bad_samples = np.flatnonzero(per_sample)
  count = int(per_sample.sum())
  if options.strict_features:
    first = int(bad_samples[0])
    raise DataError(
        f"{_where(source, split, field, ids[first])}: {int(per_sample[first])} NaN or inf feature values "
        f"({count} in {bad_samples.size} samples of this split). Set config.data.strict_features=False "
        "to replace them by 0, as MMSA does."
    )
  logging.warning(
      "%s: replaced %d NaN or inf values in %d samples by 0 (values beyond the float32 range count as inf).",
      _where(source, split, field), count, bad_samples.size,
  )
  return np.where(finite, array, 0).astype(array.dtype)


def _infer_lengths(frames: np.ndarray) -> np.ndarray:
  """Returns, per sample, the position of the last frame with a non-zero value plus one."""
  if frames.shape[1] == 0:
    return np.zeros(frames.shape[0], np.int64)
  nonzero = (frames != 0).reshape(frames.shape[0], frames.shape[1], -1).any(axis=2)
  last = frames.shape[1] - np.argmax(nonzero[:, ::-1], axis=1)
  return np.where(nonzero.any(axis=1), last, 0).astype(np.int64)


def _check_lengths(lengths: Any, num: int, stored: int, ids: np.ndarray, where: str) -> np.ndarray:
  """Returns int64 [num] lengths at most `stored`; non-integer, negative or non-finite lengths raise DataError.

  Lengths above the `stored` frames (even 10**9) are clamped with a logged count.
  """
  values = as_numeric(lengths, np.float64, where, kinds="iuf").reshape(-1)
  if values.shape[0] != num:
    raise DataError(f"{where}: expected {num} lengths, found {values.shape[0]}")
  invalid = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)) | (values < 0))
  if invalid.size:
    first = int(invalid[0])
    raise DataError(
        f"{where}, sample '{ids[first]}': length {values[first]} is not a non-negative whole number "
        f"({invalid.size} such lengths in this split)"
    )
  too_long = int((values > stored).sum())
  if too_long:
    logging.warning("%s: %d lengths exceed the %d stored frames; clamped to %d.", where, too_long, stored, stored)
  return np.minimum(values, stored).astype(np.int64)


def _normalize_sequence(
    frames: Any,
    lengths: Any,
    max_len: int,
    ids: np.ndarray,
    options: ReadOptions,
    source: str,
    split: str,
    field: str,
) -> tuple[np.ndarray, np.ndarray]:
  """Returns (float32 [N, max_len, d] zero-padded frames, int32 [N] lengths in [1, max_len]).

  Args:
    frames: an array [N, T, d], or a list of N arrays [T_i, d] (then the
      lengths are T_i and `lengths` must be None).
    lengths: int [N] valid frames, or None to infer them from non-zero frames.
  """
  num = len(ids)
  if isinstance(frames, np.ndarray) and frames.dtype == object:
    raise DataError(f"{_where(source, split, field)}: expected a numeric array [{num}, frames, features], found dtype object")
  if isinstance(frames, np.ndarray):
    if frames.ndim != 3 or frames.shape[0] != num:
      raise DataError(f"{_where(source, split, field)}: expected an array [{num}, frames, features], found shape {frames.shape}")
    stored = frames.shape[1]
    if lengths is None:
      lengths = _infer_lengths(frames)
      logging.info("%s: no lengths stored; inferred them from the last non-zero frame.", _where(source, split, field))
    window = as_numeric(frames[:, :max_len], np.float32, _where(source, split, field))
  else:
    if lengths is not None:
      raise ValueError("lengths must be None when frames is a list of per-sample arrays")  # A reader bug.
    frames = list(frames)
    if len(frames) != num:
      raise DataError(f"{_where(source, split, field)}: expected {num} sequences, found {len(frames)}")
    frames = [as_numeric(sample, np.float32, _where(source, split, field, ids[i])) for i, sample in enumerate(frames)]
    dims = set()
    for i, sample in enumerate(frames):
      if sample.ndim != 2:
        raise DataError(f"{_where(source, split, field, ids[i])}: expected an array [frames, features], found shape {sample.shape}")
      dims.add(sample.shape[1])
    if len(dims) > 1:
      raise DataError(f"{_where(source, split, field)}: samples have different feature sizes {sorted(dims)}")
    dim = dims.pop() if dims else 0
    lengths = np.asarray([sample.shape[0] for sample in frames], np.int64)
    stored = int(lengths.max(initial=0))
    window = np.zeros([num, max_len, dim], np.float32)
    for i, sample in enumerate(frames):
      head = sample[:max_len]
      window[i, : len(head)] = head

  if window.shape[2] == 0:
    raise DataError(f"{_where(source, split, field)}: expected at least one feature per frame, found 0")
  lengths = _check_lengths(lengths, num, stored, ids, _where(source, split, field + "_lengths"))
  truncated = int((lengths > max_len).sum())
  if truncated:
    logging.info("%s: truncated %d sequences to %d frames.", _where(source, split, field), truncated, max_len)
    lengths = np.minimum(lengths, max_len)
  empty = int((lengths == 0).sum())
  if empty:
    logging.warning(
        "%s: %d samples have no frames; each gets one frame of zeros (length 1), as MMSA does.",
        _where(source, split, field), empty,
    )
    lengths = np.maximum(lengths, 1)

  window = _clean_non_finite(window, ids, options, source, split, field)
  padded = np.zeros([num, max_len, window.shape[2]], np.float32)
  padded[:, : window.shape[1]] = window
  valid = np.arange(max_len)[None, :] < lengths[:, None]
  beyond = (padded != 0).any(axis=2) & ~valid
  if beyond.any():
    logging.info(
        "%s: %d samples had non-zero frames past their length; set them to 0.",
        _where(source, split, field), int(beyond.any(axis=1).sum()),
    )
  padded[~valid] = 0
  return padded, lengths.astype(np.int32)


def _truncate_token_rows(arrays: dict[str, np.ndarray], max_len: int) -> tuple[dict[str, np.ndarray], int]:
  """Cuts token rows to `max_len`, keeping each cut row's final token ([SEP]) at the end."""
  lengths = arrays["text_mask"].sum(axis=1)
  stored = arrays["text_ids"].shape[1]
  out = {}
  cut = np.flatnonzero(lengths > max_len)
  for key, values in arrays.items():
    fitted = np.zeros([values.shape[0], max_len], np.int32)
    width = min(stored, max_len)
    fitted[:, :width] = values[:, :width]
    for row in cut:
      fitted[row, max_len - 1] = values[row, lengths[row] - 1]
    out[key] = fitted
  return out, int(cut.size)


def _normalize_text_ids(raw: dict[str, Any], ids: np.ndarray, options: ReadOptions, source: str, split: str) -> dict[str, np.ndarray]:
  """Checks token ids, mask and segments and fits them to max_text_len."""
  arrays = {}
  for key in TEXT_ID_KEYS:
    values = as_numeric(raw[key], np.float64, _where(source, split, key))
    if values.ndim != 2 or values.shape[0] != len(ids):
      raise DataError(f"{_where(source, split, key)}: expected an array [{len(ids)}, tokens], found shape {values.shape}")
    invalid = ~np.isfinite(values) | (values != np.round(values)) | (values < 0) | (values > np.iinfo(np.int32).max)
    if invalid.any():
      row, column = np.argwhere(invalid)[0]
      raise DataError(
          f"{_where(source, split, key)}: expected non-negative whole numbers below 2**31 (token ids), "
          f"found {values[row, column]} in sample '{ids[row]}' at position {column}"
      )
    arrays[key] = values.astype(np.int64)
  mask = arrays["text_mask"]
  if not np.isin(mask, (0, 1)).all():
    raise DataError(f"{_where(source, split, 'text_mask')}: expected only 0 and 1")
  lengths = mask.sum(axis=1)
  if not np.array_equal(mask, (np.arange(mask.shape[1])[None, :] < lengths[:, None]).astype(mask.dtype)):
    row = int(np.flatnonzero((mask[:, 1:] > mask[:, :-1]).any(axis=1))[0])
    raise DataError(f"{_where(source, split, 'text_mask', ids[row])}: expected 1 on a prefix and 0 after it (right padding)")
  empty = np.flatnonzero(lengths == 0)
  if empty.size:
    raise DataError(
        f"{_where(source, split, 'text_mask', ids[empty[0]])}: no tokens, not even [CLS] and [SEP] "
        f"({empty.size} such samples)"
    )
  if options.vocab_file:
    from mcer_jax.data import tokenization  # Imported here so MMSA files need no vocab.

    vocab_size = tokenization.WordPieceEncoder(options.vocab_file).vocab_size
    too_large = np.flatnonzero(arrays["text_ids"].max(axis=1) >= vocab_size)
    if too_large.size:
      raise DataError(
          f"{_where(source, split, 'text_ids', ids[too_large[0]])}: token id {arrays['text_ids'][too_large[0]].max()} "
          f"is outside the {vocab_size}-entry vocabulary {options.vocab_file}; the release was tokenised with "
          "another vocabulary than the configured text encoder's."
      )
  fitted, cut = _truncate_token_rows(arrays, options.max_text_len)
  if cut:
    logging.info("%s: truncated %d token sequences to %d tokens.", _where(source, split, "text_ids"), cut, options.max_text_len)
  return fitted


def _normalize_text_features(raw: dict[str, Any], ids: np.ndarray, options: ReadOptions, source: str, split: str) -> dict[str, np.ndarray]:
  """Checks precomputed text features [N, L, d] and derives their mask from non-zero rows."""
  features = as_numeric(raw["text_features"], np.float32, _where(source, split, "text_features"))
  if features.ndim != 3 or features.shape[0] != len(ids):
    raise DataError(f"{_where(source, split, 'text_features')}: expected [{len(ids)}, tokens, features], found {features.shape}")
  lengths = raw.get("text_lengths")
  frames, lengths = _normalize_sequence(features, lengths, options.max_text_len, ids, options, source, split, "text_features")
  mask = (np.arange(options.max_text_len)[None, :] < lengths[:, None]).astype(np.int32)
  return {"text_features": frames, "text_mask": mask}


def normalize_split(raw: dict[str, Any], options: ReadOptions, source: str, split: str) -> dict[str, np.ndarray]:
  """Checks one split's fields and returns the interface's arrays.

  Args:
    raw: `id`, `raw_text`, `labels` and optionally `labels_t`, `labels_a`,
      `labels_v`. The text is `text_ids`, `text_mask`, `text_segment` [N, L]
      or `text_features` [N, L, d]. `audio` and `vision` are [N, T, d] arrays
      with `audio_lengths`/`vision_lengths` ([N] or None), or lists of [T_i, d].
    options: the maximum lengths, label range and strictness.
    source: the file the split came from, for messages.
    split: the split name, for messages.

  Returns:
    The split arrays of docs/interfaces.md.
  """
  ids = _as_strings(raw["id"], source, split, "id")
  if ids.size == 0:
    raise DataError(f"{_where(source, split)}: the split has no samples")
  unique, counts = np.unique(ids, return_counts=True)
  if (counts > 1).any():
    raise DataError(f"{_where(source, split, 'id', unique[counts > 1][0])}: the id occurs {counts.max()} times; ids must be unique")
  out: dict[str, np.ndarray] = {"id": ids}
  raw_text = _as_strings(raw["raw_text"], source, split, "raw_text")
  if raw_text.shape != ids.shape:
    raise DataError(f"{_where(source, split, 'raw_text')}: {raw_text.size} transcripts for {ids.size} ids")
  out["raw_text"] = raw_text

  if "text_features" in raw:
    out.update(_normalize_text_features(raw, ids, options, source, split))
  else:
    out.update(_normalize_text_ids(raw, ids, options, source, split))
  for modality, max_len in (("audio", options.max_audio_len), ("vision", options.max_vision_len)):
    frames, lengths = _normalize_sequence(
        raw[modality], raw.get(f"{modality}_lengths"), max_len, ids, options, source, split, modality
    )
    out[modality] = frames
    out[f"{modality}_lengths"] = lengths
  out["labels"] = _check_labels(raw["labels"], ids, options, source, split, "labels")
  for key in UNIMODAL_LABEL_KEYS:
    if raw.get(key) is not None:
      out[key] = _check_labels(raw[key], ids, options, source, split, key)
  return out


def check_splits(splits: dict[str, dict[str, np.ndarray]], source: str, required: Sequence[str] = SPLITS) -> None:
  """Raises DataError when a split is missing or the splits disagree on fields or feature sizes."""
  missing = [name for name in required if name not in splits]
  if missing:
    raise DataError(f"{source}: missing split(s) {missing}; found {sorted(splits)}. Every release needs {list(required)}.")
  names = list(splits)
  first = names[0]
  for name in names[1:]:
    if set(splits[name]) != set(splits[first]):
      raise DataError(
          f"{source}: splits '{first}' and '{name}' have different fields: "
          f"{sorted(splits[first])} and {sorted(splits[name])}"
      )
    for key, values in splits[first].items():
      if key in ("id", "raw_text") or values.ndim < 2:
        continue
      if values.shape[1:] != splits[name][key].shape[1:]:
        raise DataError(
            f"{source}: field '{key}' has shape {values.shape[1:]} per sample in split '{first}' but "
            f"{splits[name][key].shape[1:]} in split '{name}'; every split must have the same feature sizes."
        )
