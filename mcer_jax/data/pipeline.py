"""The Grain input pipeline: shuffled, bucketed, padded and sharded batches.

`epoch_batches` turns a random-access source (`mcer_jax.data.sources`) into
host-side numpy batches with the keys of docs/interfaces.md plus `index` and
`weight`, each array shaped [num_devices, batch_size / (num_devices *
process_count), ...] for a pmapped step.

* Order: every process computes the same permutation of the split from
  (seed, epoch) with Grain's index shuffle, so the global batches agree.
* Sharding: process p gets rows [p * B / P, (p + 1) * B / P) of each global
  batch of B samples, so concatenating the processes' rows in process order
  gives the global batch.
* Nothing is dropped: the last global batch is filled with copies of sample 0
  that have `weight` 0 and `index` 0, in training as in evaluation.
* Text is cut to the smallest length in `text_buckets` that fits the longest
  text of the global batch, so a step sees one of a few shapes. Audio and
  vision keep their full maximum length.
* With `length_pool` = k > 0, each run of k batches of the shuffled order is
  sorted by text length before it is cut into batches, and the batches of the
  epoch are then shuffled. A batch then contains texts of similar length and
  falls into a shorter bucket: the text encoder computes fewer padding tokens.
"""

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from mcer_jax.data.sources import STRING_KEYS

TEXT_KEYS = ("text_ids", "text_mask", "text_segment", "text_features")


def num_batches(num_samples: int, batch_size: int) -> int:
  """Returns the number of batches of `batch_size` that hold `num_samples` samples, the last one padded."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be at least 1, found {batch_size}")
  return -(-num_samples // batch_size)


def epoch_seed(seed: int, epoch: int) -> int:
  """Returns the shuffle seed of one epoch, derived from (seed, epoch)."""
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint32)[0])


def epoch_order(num_samples: int, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
  """Returns the row order of one epoch: a Grain index shuffle seeded by (seed, epoch), or 0..n-1."""
  if not shuffle:
    return np.arange(num_samples, dtype=np.int64)
  permuted = grain.MapDataset.range(num_samples).shuffle(seed=epoch_seed(seed, epoch))
  return np.fromiter((permuted[i] for i in range(num_samples)), dtype=np.int64, count=num_samples)


def length_pooled_grid(
    order: np.ndarray, text_lengths: np.ndarray, batch_size: int, length_pool: int, seed: int
) -> np.ndarray:
  """Returns the [num_batches, batch_size] sample rows of an epoch whose pools are sorted by text length.

  Args:
    order: the epoch's shuffled sample order.
    text_lengths: int [N] real tokens per sample.
    batch_size: the global batch size.
    length_pool: batches per pool; each pool of `length_pool * batch_size`
      consecutive samples of `order` is sorted by text length (ties keep the
      shuffled order).
    seed: seeds the shuffle of the batches.

  Returns:
    Rows of sample numbers, -1 where the one short batch is padded.
  """
  pool_size = length_pool * batch_size
  pools = [order[start:start + pool_size] for start in range(0, len(order), pool_size)]
  ordered = np.concatenate([pool[np.argsort(text_lengths[pool], kind="stable")] for pool in pools])
  total = num_batches(len(order), batch_size)
  grid = np.full(total * batch_size, -1, np.int64)
  grid[: len(order)] = ordered
  # Without this shuffle every pool would run from its shortest texts to its longest.
  return grid.reshape(total, batch_size)[np.random.default_rng(seed).permutation(total)]


def text_lengths_of(source: Any) -> np.ndarray:
  """Returns int [N] real text tokens per sample: `source.text_lengths`, or counted from `text_mask`."""
  lengths = getattr(source, "text_lengths", None)
  if lengths is None:
    lengths = [int(np.asarray(source[i]["text_mask"]).sum()) for i in range(len(source))]
  return np.asarray(lengths, np.int64)


def bucket_length(longest: int, buckets: Sequence[int], stored: int) -> int:
  """Returns the smallest bucket (capped at the stored length) that fits `longest` tokens."""
  for bucket in sorted(min(b, stored) for b in buckets):
    if bucket >= longest:
      return bucket
  raise ValueError(
      f"a batch contains a text of {longest} tokens, longer than the largest text bucket "
      f"{max(buckets)}; add config.data.max_text_len to config.data.text_buckets"
  )


def _fit_rows(values: np.ndarray, length: int, key: str) -> np.ndarray:
  """Pads axis 1 of a stacked field to `length`; raises if that would cut data."""
  if values.shape[1] == length:
    return values
  if values.shape[1] > length:
    if np.any(values[:, length:] != 0):
      raise ValueError(
          f"'{key}' has {values.shape[1]} frames per sample, more than the maximum length {length}; "
          "prepare the data with the same maximum lengths as this config"
      )
    return values[:, :length]
  pad = [(0, 0), (0, length - values.shape[1])] + [(0, 0)] * (values.ndim - 2)
  return np.pad(values, pad)


class _BatchMaker:
  """Builds one process's part of a global batch from its row numbers."""

  def __init__(self, source, grid, text_lengths, *, buckets, max_lengths, rows, num_devices):
    self._source = source
    self._grid = grid
    self._text_lengths = text_lengths
    self._buckets = tuple(buckets)
    self._max_lengths = dict(max_lengths or {})
    self._rows = rows
    self._num_devices = num_devices
    self._fill = None  # Sample 0, which fills the padding rows.

  def _samples(self, indices: np.ndarray) -> list[dict[str, Any]]:
    if hasattr(self._source, "__getitems__"):
      return list(self._source.__getitems__([int(i) for i in indices]))
    return [self._source[int(i)] for i in indices]

  def __call__(self, batch_number: int) -> dict[str, np.ndarray]:
    global_rows = self._grid[batch_number]
    real_rows = global_rows[global_rows >= 0]
    local = global_rows[self._rows]
    real = local >= 0
    samples = self._samples(local[real])
    if not real.all():
      if self._fill is None:
        self._fill = self._samples(np.asarray([0]))[0]
      filled = iter(samples)
      samples = [next(filled) if is_real else self._fill for is_real in real]

    batch = {}
    for key in samples[0]:
      if key in STRING_KEYS:
        continue
      batch[key] = np.stack([np.asarray(sample[key]) for sample in samples])
    stored = batch["text_mask"].shape[1]
    if self._buckets:
      longest = int(self._text_lengths[real_rows].max())
      if len(real_rows) < len(global_rows):
        # Padding rows repeat sample 0, so its text must fit the bucket too.
        longest = max(longest, int(self._text_lengths[0]))
      text_length = bucket_length(longest, self._buckets, stored)
    else:
      text_length = self._max_lengths.get("text", stored)
    for key in TEXT_KEYS:
      if key in batch:
        batch[key] = _fit_rows(batch[key], text_length, key)
    for key in ("audio", "vision"):
      if key in self._max_lengths:
        batch[key] = _fit_rows(batch[key], self._max_lengths[key], key)
    batch["index"] = np.where(real, local, 0).astype(np.int32)
    batch["weight"] = real.astype(np.float32)
    per_device = len(local) // self._num_devices
    return {key: value.reshape((self._num_devices, per_device) + value.shape[1:]) for key, value in batch.items()}


def epoch_batches(
    source: Any,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool,
    start_batch: int = 0,
    num_devices: int = 1,
    process_index: int = 0,
    process_count: int = 1,
    text_buckets: Sequence[int] = (),
    length_pool: int = 0,
    max_lengths: Mapping[str, int] | None = None,
    num_threads: int = 2,
    prefetch: int = 4,
) -> Iterator[dict[str, np.ndarray]]:
  """Returns an iterator over this process's batches of one epoch, from batch `start_batch` on.

  The arguments are checked when it is called, before the first batch.

  Args:
    source: a random-access source (`__len__`, `__getitem__`); `text_lengths`
      and `__getitems__` are used when present.
    batch_size: the global batch size over all devices of all processes.
    seed: the run's seed; with `epoch` it fixes the order.
    epoch: the epoch number; each epoch has its own permutation.
    shuffle: False keeps the split's order (evaluation).
    start_batch: the first batch to yield, to resume inside an epoch.
    num_devices: local devices; the leading axis of every array.
    process_index: this JAX process.
    process_count: the number of JAX processes.
    text_buckets: allowed text lengths; () keeps the stored length (or
      `max_lengths["text"]`).
    length_pool: when shuffling, sort each run of this many batches by text
      length (see `length_pooled_grid`); 0 keeps the plain shuffle.
    max_lengths: optional `text`, `audio`, `vision` lengths to pad to; by
      default the source's sample shapes are kept.
    num_threads: Grain threads that build batches ahead of use.
    prefetch: batches Grain builds ahead.

  Returns:
    An iterator of dicts of numpy arrays [num_devices, batch_size / (num_devices *
    process_count), ...]: the split's array keys, `index` (int32) and `weight`
    (float32, 0 on padding).
  """
  num_samples = len(source)
  if num_samples == 0:
    raise ValueError("the source has no samples")
  if num_devices < 1 or process_count < 1:
    raise ValueError(f"num_devices and process_count must be at least 1, found {num_devices} and {process_count}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index must be in [0, {process_count}), found {process_index}")
  shards = num_devices * process_count
  if batch_size % shards:
    raise ValueError(
        f"the global batch size {batch_size} is not divisible by {num_devices} devices x {process_count} "
        f"processes = {shards}; set config.train.batch_size (and eval_batch_size) to a multiple of {shards}"
    )
  total = num_batches(num_samples, batch_size)
  if not 0 <= start_batch <= total:
    raise ValueError(f"start_batch must be in [0, {total}], found {start_batch}")

  if length_pool < 0:
    raise ValueError(f"length_pool must be 0 (off) or a number of batches, found {length_pool}")
  order = epoch_order(num_samples, seed=seed, epoch=epoch, shuffle=shuffle)
  text_lengths = text_lengths_of(source) if text_buckets or (shuffle and length_pool) else None
  if shuffle and length_pool:
    grid = length_pooled_grid(order, text_lengths, batch_size, length_pool, seed=epoch_seed(seed, epoch) + 1)
  else:
    grid = np.full(total * batch_size, -1, np.int64)
    grid[:num_samples] = order
    grid = grid.reshape(total, batch_size)
  per_process = batch_size // process_count
  rows = slice(process_index * per_process, (process_index + 1) * per_process)
  make = _BatchMaker(
      source, grid, text_lengths if text_buckets else None,
      buckets=text_buckets, max_lengths=max_lengths, rows=rows, num_devices=num_devices,
  )
  batches = grain.MapDataset.range(start_batch, total).map(make)
  if num_threads > 0:
    return iter(batches.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)))
  return (batches[i] for i in range(len(batches)))
