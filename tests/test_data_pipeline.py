"""Tests of the Grain input pipeline: order, resumption, sharding, padding and text buckets."""

import numpy as np
import pytest

from mcer_jax.data import pipeline
from mcer_jax.data.sources import ArraySource

MAX_TEXT = 12


def _source(num: int, seed: int = 0) -> ArraySource:
  """A split of `num` samples, mostly short texts of 2 to MAX_TEXT tokens, whose label is the row."""
  rng = np.random.default_rng(seed)
  text_lengths = np.clip(1 + rng.geometric(0.3, num), 2, MAX_TEXT)
  mask = (np.arange(MAX_TEXT)[None, :] < text_lengths[:, None]).astype(np.int32)
  ids = rng.integers(5, 100, (num, MAX_TEXT)).astype(np.int32) * mask
  audio_lengths = rng.integers(1, 7, num).astype(np.int32)
  return ArraySource({
      "id": np.asarray([f"s{i}" for i in range(num)]),
      "raw_text": np.asarray(["text"] * num),
      "text_ids": ids,
      "text_mask": mask,
      "text_segment": np.zeros_like(ids),
      "audio": rng.normal(size=(num, 6, 3)).astype(np.float32),
      "audio_lengths": audio_lengths,
      "vision": rng.normal(size=(num, 4, 5)).astype(np.float32),
      "vision_lengths": np.full(num, 4, np.int32),
      "labels": np.arange(num, dtype=np.float32),
  })


def _batches(source, **kwargs):
  defaults = dict(batch_size=8, seed=3, epoch=1, shuffle=True)
  defaults.update(kwargs)
  return list(pipeline.epoch_batches(source, **defaults))


def _global_rows(source, process_count, **kwargs):
  """Returns per global batch the (index, weight) rows of all processes, in process order."""
  per_process = [
      _batches(source, process_index=p, process_count=process_count, **kwargs) for p in range(process_count)
  ]
  out = []
  for parts in zip(*per_process):
    index = np.concatenate([part["index"].reshape(-1) for part in parts])
    weight = np.concatenate([part["weight"].reshape(-1) for part in parts])
    out.append((index, weight))
  return out


def test_num_batches():
  assert pipeline.num_batches(16, 8) == 2
  assert pipeline.num_batches(17, 8) == 3
  assert pipeline.num_batches(1, 8) == 1
  assert pipeline.num_batches(0, 8) == 0


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("num_samples, process_count, num_devices", [(37, 2, 2), (16, 1, 4), (5, 4, 1), (64, 2, 1)])
def test_every_sample_once(num_samples, process_count, num_devices, shuffle):
  source = _source(num_samples)
  rows = _global_rows(source, process_count, num_devices=num_devices, shuffle=shuffle)
  assert len(rows) == pipeline.num_batches(num_samples, 8)
  index = np.concatenate([r[0] for r in rows])
  weight = np.concatenate([r[1] for r in rows])
  real = index[weight == 1]
  assert sorted(real.tolist()) == list(range(num_samples))
  assert set(np.unique(weight).tolist()) <= {0.0, 1.0}
  assert (index[weight == 0] == 0).all()
  assert (weight == 0).sum() == len(rows) * 8 - num_samples
  if not shuffle:
    np.testing.assert_array_equal(real, np.arange(num_samples))


def test_batch_shapes_have_device_axis():
  batch = _batches(_source(20), num_devices=2, process_count=2, process_index=1)[0]
  assert batch["text_ids"].shape[:2] == (2, 2)
  assert batch["audio"].shape == (2, 2, 6, 3)
  assert batch["vision"].shape == (2, 2, 4, 5)
  assert batch["labels"].shape == (2, 2)
  assert batch["index"].dtype == np.int32
  assert batch["weight"].dtype == np.float32
  assert "id" not in batch
  assert "raw_text" not in batch


def test_batches_hold_the_indexed_samples():
  source = _source(21)
  for batch in _batches(source, num_devices=2):
    index = batch["index"].reshape(-1)
    np.testing.assert_array_equal(batch["labels"].reshape(-1), source.arrays["labels"][index])
    np.testing.assert_array_equal(batch["audio"].reshape(-1, 6, 3), source.arrays["audio"][index])
    np.testing.assert_array_equal(batch["audio_lengths"].reshape(-1), source.arrays["audio_lengths"][index])
    width = batch["text_ids"].shape[-1]
    np.testing.assert_array_equal(batch["text_ids"].reshape(-1, width), source.arrays["text_ids"][index, :width])


def test_same_seed_and_epoch_same_order():
  source = _source(50)
  first = [b["index"] for b in _batches(source, epoch=4)]
  second = [b["index"] for b in _batches(source, epoch=4)]
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a, b)


def test_order_changes_with_epoch_and_seed():
  order = pipeline.epoch_order(50, seed=3, epoch=1, shuffle=True)
  assert sorted(order.tolist()) == list(range(50))
  assert not np.array_equal(order, np.arange(50))
  assert not np.array_equal(order, pipeline.epoch_order(50, seed=3, epoch=2, shuffle=True))
  assert not np.array_equal(order, pipeline.epoch_order(50, seed=4, epoch=1, shuffle=True))
  epoch_batches = np.concatenate([b["index"].reshape(-1) for b in _batches(_source(50), batch_size=10)])
  np.testing.assert_array_equal(epoch_batches, order)


@pytest.mark.parametrize("start_batch", [0, 1, 3, 5])
def test_start_batch_resumes_exactly(start_batch):
  source = _source(37)
  full = _batches(source, epoch=2, num_devices=2)
  resumed = _batches(source, epoch=2, num_devices=2, start_batch=start_batch)
  assert len(resumed) == len(full) - start_batch
  for a, b in zip(full[start_batch:], resumed):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_text_bucket_is_smallest_holding_longest():
  source = _source(60, seed=1)
  buckets = (4, 8, MAX_TEXT)
  shapes = set()
  for process_count in (1, 2):
    per_process = [
        _batches(source, text_buckets=buckets, process_index=p, process_count=process_count) for p in range(process_count)
    ]
    for parts in zip(*per_process):
      index = np.concatenate([part["index"].reshape(-1) for part in parts])
      weight = np.concatenate([part["weight"].reshape(-1) for part in parts])
      longest = source.text_lengths[index[weight == 1]].max()
      expected = min(b for b in buckets if b >= longest)
      for part in parts:
        assert part["text_ids"].shape[-1] == expected
        assert part["text_mask"].shape[-1] == expected
        np.testing.assert_array_equal(
            part["text_mask"].sum(axis=-1), source.text_lengths[part["index"]],
        )
      shapes.add(expected)
  assert len(shapes) > 1


def test_buckets_above_stored_length_are_capped():
  batch = _batches(_source(8), text_buckets=(50,))[0]
  assert batch["text_ids"].shape[-1] == MAX_TEXT


def test_text_longer_than_buckets_raises():
  with pytest.raises(ValueError, match="longer than the largest text bucket 4"):
    _batches(_source(30), text_buckets=(4,))


def test_max_lengths_pad_frames():
  batch = _batches(_source(8), max_lengths={"text": 16, "audio": 9, "vision": 4})[0]
  assert batch["text_ids"].shape[-1] == 16
  assert batch["audio"].shape[-2] == 9
  np.testing.assert_array_equal(batch["audio"][..., 6:, :], 0)


def test_padding_rows_copy_sample_zero():
  source = _source(9)
  last = _batches(source, shuffle=False)[-1]
  assert last["weight"].reshape(-1).tolist() == [1] + [0] * 7
  np.testing.assert_array_equal(last["audio"][0, 1:], np.repeat(source.arrays["audio"][:1], 7, axis=0))
  np.testing.assert_array_equal(last["audio_lengths"][0, 1:], source.arrays["audio_lengths"][0])


def test_batch_size_not_divisible_raises():
  with pytest.raises(ValueError, match=r"global batch size 10 is not divisible by 2 devices x 2 processes = 4"):
    pipeline.epoch_batches(_source(8), batch_size=10, seed=0, epoch=1, shuffle=False, num_devices=2, process_count=2)


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="process_index"):
    pipeline.epoch_batches(_source(8), batch_size=8, seed=0, epoch=1, shuffle=False, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="start_batch"):
    pipeline.epoch_batches(_source(8), batch_size=8, seed=0, epoch=1, shuffle=False, start_batch=2)
  with pytest.raises(ValueError, match="no samples"):
    pipeline.epoch_batches(_source(0), batch_size=8, seed=0, epoch=1, shuffle=False)


def test_without_threads_same_batches():
  source = _source(20)
  threaded = _batches(source, num_threads=2)
  plain = _batches(source, num_threads=0)
  for a, b in zip(threaded, plain):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_padding_rows_fit_the_text_bucket():
  from mcer_jax.data import pipeline
  from mcer_jax.data.sources import ArraySource

  count, stored = 5, 12
  lengths = np.array([12, 3, 3, 3, 3])  # Sample 0, which fills padding rows, is the longest.
  ids = np.zeros((count, stored), np.int32)
  for row, length in enumerate(lengths):
    ids[row, :length] = np.arange(1, length + 1)
  arrays = {
      "id": np.array([f"s{i}" for i in range(count)]),
      "raw_text": np.array(["text"] * count),
      "text_ids": ids,
      "text_mask": (ids > 0).astype(np.int32),
      "text_segment": np.zeros_like(ids),
      "audio": np.zeros((count, 4, 2), np.float32),
      "audio_lengths": np.full(count, 4, np.int32),
      "vision": np.zeros((count, 4, 3), np.float32),
      "vision_lengths": np.full(count, 4, np.int32),
      "labels": np.zeros(count, np.float32),
  }
  source = ArraySource(arrays)
  batches = list(pipeline.epoch_batches(
      source, batch_size=4, seed=0, epoch=1, shuffle=False, text_buckets=(4, 12), num_threads=0))
  last = batches[-1]
  assert last["weight"].sum() == 1
  assert last["text_ids"].shape[-1] == 12


@pytest.mark.parametrize("num_samples, batch_size, pool", [(37, 8, 2), (64, 8, 3), (50, 10, 100)])
def test_length_pool_sorts_pools_and_covers_samples(num_samples, batch_size, pool):
  source = _source(num_samples, seed=2)
  order = pipeline.epoch_order(num_samples, seed=3, epoch=1, shuffle=True)
  rows = _global_rows(source, 1, batch_size=batch_size, length_pool=pool)
  seen = np.concatenate([index[weight == 1] for index, weight in rows])
  assert sorted(seen.tolist()) == list(range(num_samples))
  # Independently of the implementation: the texts of pool p, sorted, are the
  # lengths of the batches of pool p laid end to end in some batch order.
  pool_size = pool * batch_size
  for start in range(0, num_samples, pool_size):
    members = set(order[start:start + pool_size].tolist())
    pool_rows = [index[weight == 1] for index, weight in rows if set(index[weight == 1].tolist()) <= members]
    assert sum(len(r) for r in pool_rows) == len(members)
    for r in pool_rows:
      assert np.all(np.diff(source.text_lengths[r]) >= 0)
    spans = sorted((source.text_lengths[r].min(), source.text_lengths[r].max()) for r in pool_rows)
    for (_, high), (low, _) in zip(spans, spans[1:]):
      assert high <= low


def test_length_pool_is_deterministic_and_changes_with_epoch():
  source = _source(60, seed=4)
  first = [b["index"] for b in _batches(source, epoch=3, length_pool=2)]
  again = [b["index"] for b in _batches(source, epoch=3, length_pool=2)]
  other = [b["index"] for b in _batches(source, epoch=4, length_pool=2)]
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(first, other))


def test_length_pool_shortens_buckets_across_processes():
  source = _source(96, seed=5)
  buckets = (4, 8, MAX_TEXT)
  plain = [b["text_ids"].shape[-1] for b in _batches(source, text_buckets=buckets)]
  pooled = [b["text_ids"].shape[-1] for b in _batches(source, text_buckets=buckets, length_pool=4)]
  assert np.mean(pooled) < np.mean(plain)
  one = _global_rows(source, 1, text_buckets=buckets, length_pool=4)
  two = _global_rows(source, 2, text_buckets=buckets, length_pool=4)
  for (index_a, weight_a), (index_b, weight_b) in zip(one, two):
    np.testing.assert_array_equal(index_a, index_b)
    np.testing.assert_array_equal(weight_a, weight_b)


def test_length_pool_leaves_evaluation_order_alone():
  source = _source(30, seed=6)
  plain = [b["index"] for b in _batches(source, shuffle=False)]
  pooled = [b["index"] for b in _batches(source, shuffle=False, length_pool=3)]
  for a, b in zip(plain, pooled):
    np.testing.assert_array_equal(a, b)


def test_length_pool_start_batch_resumes_exactly():
  source = _source(45, seed=7)
  full = _batches(source, epoch=2, length_pool=2, text_buckets=(4, 8, MAX_TEXT))
  resumed = _batches(source, epoch=2, length_pool=2, text_buckets=(4, 8, MAX_TEXT), start_batch=3)
  for a, b in zip(full[3:], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_negative_length_pool_raises():
  with pytest.raises(ValueError, match="length_pool must be 0"):
    _batches(_source(8), length_pool=-1)
