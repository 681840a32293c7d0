"""Random-access sources of per-sample dicts (the keys of docs/interfaces.md).

A source has `__len__`, `__getitem__(index) -> dict` and `__getitems__(indices)`,
and `text_lengths` (int [N], real tokens per sample), which the input pipeline
uses to pick a text bucket without reading the samples.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

STRING_KEYS = ("id", "raw_text")


class ArraySource:
  """A source over split arrays held in memory (synthetic data, tests)."""

  def __init__(self, arrays: Mapping[str, np.ndarray]):
    sizes = {key: len(values) for key, values in arrays.items()}
    if len(set(sizes.values())) != 1:
      raise ValueError(f"all arrays of a split need the same number of rows, found {sizes}")
    self.arrays = dict(arrays)
    self._size = next(iter(sizes.values()))
    self.text_lengths = np.asarray(self.arrays["text_mask"]).sum(axis=1).astype(np.int32)

  def __len__(self) -> int:
    return self._size

  def __getitem__(self, index: int) -> dict[str, Any]:
    if not -self._size <= index < self._size:
      raise IndexError(f"index {index} is out of range for a split of {self._size} samples")
    return {key: (str(values[index]) if key in STRING_KEYS else values[index]) for key, values in self.arrays.items()}

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    return [self[int(index)] for index in indices]


def _decode(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _pad_rows(values: np.ndarray, length: int) -> np.ndarray:
  """Zero-pads (or cuts) axis 0 of `values` to `length`."""
  out = np.zeros((length,) + values.shape[1:], values.dtype)
  head = values[:length]
  out[: len(head)] = head
  return out


class TfdsSource:
  """A source over a prepared TFDS split (`tfds.data_source`), padding frames back to the maximum lengths.

  The prepared data stores only the valid audio and vision frames; this adds
  the zero padding, so samples have the interface's fixed shapes.
  """

  def __init__(
      self,
      data_source: Any,
      max_lengths: Mapping[str, int],
      text_lengths: Sequence[int],
      dtypes: Mapping[str, np.dtype],
  ):
    self._data_source = data_source
    self.max_lengths = dict(max_lengths)
    self._dtypes = dict(dtypes)
    self.text_lengths = np.asarray(text_lengths, np.int32)
    if len(self.text_lengths) != len(data_source):
      raise ValueError(f"{len(self.text_lengths)} text lengths for {len(data_source)} samples; prepare the data again")

  def __len__(self) -> int:
    return len(self._data_source)

  def _convert(self, example: Mapping[str, Any]) -> dict[str, Any]:
    sample = {}
    for key, value in example.items():
      if key in STRING_KEYS:
        sample[key] = _decode(value)
      elif key in ("audio", "vision"):
        sample[key] = _pad_rows(np.asarray(value, self._dtypes[key]), self.max_lengths[key])
      else:
        sample[key] = np.asarray(value, self._dtypes[key])
    return sample

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self._convert(self._data_source[int(index)])

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    examples = self._data_source.__getitems__([int(index) for index in indices])
    return [self._convert(example) for example in examples]
