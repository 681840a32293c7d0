"""Property-based tests: damaged copies of the real MOSI files end in a clear error or a logged repair.

Every example copies a real file (MMSA pickle, MISA pickles, or computational
sequences written from the MISA samples), damages it, and reads it with
`readers.read_manual_dir`. An example passes when the reader either raises a
`DataError` whose message names the damaged file, or returns split arrays that
satisfy docs/interfaces.md. Any other exception, or a reader that runs past
`READ_DEADLINE_SECONDS`, fails the test. Some corruptions also have a known
outcome (an error naming the field, or a logged repair with an exact count),
which is checked too.

The examples are derandomized, so CI runs the same ones every time. Set
MCER_FUZZ_EXAMPLES=500 to draw that many random examples per test instead.
"""

import contextlib
import datetime
import json
import logging
import os
import pickle
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from mcer_jax.data import readers
from mcer_jax.data import safe_pickle
from mcer_jax.data.errors import DataError
from mcer_jax.data.normalize import ReadOptions

READ_DEADLINE_SECONDS = 30
_EXAMPLES = int(os.environ.get("MCER_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=_EXAMPLES or 25,
    derandomize=not _EXAMPLES,
    deadline=datetime.timedelta(seconds=READ_DEADLINE_SECONDS),
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
SPLITS = ("train", "valid", "test")
MISA_FILES = ("train.pkl", "dev.pkl", "test.pkl")
MMSA_FILE = "unaligned_50.pkl"
MAX_LEN = 50


class ReaderTimeout(Exception):
  """The reader ran past its deadline."""


@contextlib.contextmanager
def _deadline(seconds: float):
  """Raises ReaderTimeout inside the block once `seconds` have passed (SIGALRM, main thread)."""

  def expire(signum, frame):
    del signum, frame
    raise ReaderTimeout(f"the reader ran for more than {seconds} s")

  previous = signal.signal(signal.SIGALRM, expire)
  signal.setitimer(signal.ITIMER_REAL, seconds)
  try:
    yield
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def options(minilm):
  return ReadOptions(vocab_file=str(minilm / "vocab.txt"))


@pytest.fixture(scope="module")
def vocab_size(minilm):
  with open(minilm / "vocab.txt", encoding="utf-8") as stream:
    return sum(1 for _ in stream)


class _RealFiles:
  """The bytes and the unpickled contents of the real MOSI files, with a short repr for failure reports."""

  def __init__(self, folder):
    self.mmsa_bytes = (folder / "mmsa" / MMSA_FILE).read_bytes()
    self.mmsa_data = safe_pickle.load(folder / "mmsa" / MMSA_FILE)
    self.misa_bytes = {name: (folder / "misa" / name).read_bytes() for name in MISA_FILES}
    self.misa_records = {name: safe_pickle.load(folder / "misa" / name) for name in MISA_FILES}

  def __repr__(self):
    return "<real MOSI files>"


@pytest.fixture(scope="module")
def real(mosi_real):
  return _RealFiles(mosi_real)


def _write_mmsa(folder, payload: bytes):
  folder.mkdir(exist_ok=True)
  (folder / MMSA_FILE).write_bytes(payload)
  return folder


def _write_misa(folder, misa_bytes, name: str, payload: bytes):
  folder.mkdir(exist_ok=True)
  for other, data in misa_bytes.items():
    (folder / other).write_bytes(payload if other == name else data)
  return folder


def _copy_mmsa(data):
  return {split: dict(fields) for split, fields in data.items()}


def _assert_interface(result, options, vocab_size):
  """Checks split arrays against docs/interfaces.md."""
  assert set(result) == set(SPLITS)
  for split, arrays in result.items():
    count = len(arrays["id"])
    assert count > 0, split
    assert len(set(arrays["id"].tolist())) == count, f"{split}: duplicate ids"
    assert arrays["text_ids"].dtype == np.int32
    assert arrays["text_ids"].shape == (count, options.max_text_len)
    assert arrays["text_ids"].min() >= 0
    assert arrays["text_ids"].max() < vocab_size
    mask = arrays["text_mask"]
    lengths = mask.sum(axis=1)
    assert (lengths >= 1).all(), split
    np.testing.assert_array_equal(mask, np.arange(mask.shape[1])[None, :] < lengths[:, None])
    for modality, max_len in (("audio", options.max_audio_len), ("vision", options.max_vision_len)):
      frames = arrays[modality]
      frame_lengths = arrays[f"{modality}_lengths"]
      assert frames.dtype == np.float32
      assert frames.shape[:2] == (count, max_len)
      assert frames.shape[2] >= 1
      assert np.isfinite(frames).all(), f"{split}/{modality} is not finite"
      assert frame_lengths.dtype == np.int32
      assert (frame_lengths >= 1).all(), f"{split}/{modality}_lengths"
      assert (frame_lengths <= max_len).all(), f"{split}/{modality}_lengths"
      padding = np.arange(max_len)[None, :] >= frame_lengths[:, None]
      assert not frames[padding].any(), f"{split}/{modality}: non-zero frames past the length"
    assert arrays["labels"].dtype == np.float32
    assert np.isfinite(arrays["labels"]).all()
    assert (np.abs(arrays["labels"]) <= options.label_range + 1e-4).all()


def _read(folder, damaged: str, options, vocab_size):
  """Reads `folder`; returns the split arrays, or the DataError, which must name the `damaged` file."""
  try:
    with _deadline(READ_DEADLINE_SECONDS):
      result = readers.read_manual_dir(str(folder), options=options)
  except DataError as error:
    assert damaged in str(error), f"the error does not name {damaged}: {error}"
    return error
  _assert_interface(result, options, vocab_size)
  return result


# Byte-level damage: truncation and flipped bytes.


@FUZZ
@given(layout_file=st.sampled_from((MMSA_FILE,) + MISA_FILES), fraction=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_pickle_rejected(tmp_path, options, vocab_size, real, layout_file, fraction):
  original = real.mmsa_bytes if layout_file == MMSA_FILE else real.misa_bytes[layout_file]
  payload = original[: int(len(original) * fraction)]
  if layout_file == MMSA_FILE:
    folder = _write_mmsa(tmp_path / "mmsa", payload)
  else:
    folder = _write_misa(tmp_path / "misa", real.misa_bytes, layout_file, payload)
  outcome = _read(folder, layout_file, options, vocab_size)
  # A pickle ends with its STOP opcode, so any cut leaves an unreadable file.
  assert isinstance(outcome, DataError)


@FUZZ
@given(
    layout_file=st.sampled_from((MMSA_FILE,) + MISA_FILES),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=8),
    near_start=st.booleans(),
)
def test_flipped_pickle_bytes(tmp_path, options, vocab_size, real, layout_file, flips, near_start):
  original = real.mmsa_bytes if layout_file == MMSA_FILE else real.misa_bytes[layout_file]
  payload = bytearray(original)
  # The first 4 KiB hold the opcodes and dict keys; later bytes are mostly array data.
  span = min(len(payload), 4096) if near_start else len(payload)
  for position, mask in flips:
    payload[int(position * span)] ^= mask
  if layout_file == MMSA_FILE:
    folder = _write_mmsa(tmp_path / "mmsa", bytes(payload))
  else:
    folder = _write_misa(tmp_path / "misa", real.misa_bytes, layout_file, bytes(payload))
  _read(folder, layout_file, options, vocab_size)


# Field-level damage of the MMSA pickle: wrong dtypes, wrong shapes, non-finite and huge values.

# Each corruption maps a field's value to a new value.
_CORRUPTIONS = {
    "text": lambda value: np.full(np.shape(value), "x", dtype=object) if np.ndim(value) else "x",
    "numeric_text": lambda value: np.asarray(value).astype(str),
    "complex": lambda value: np.asarray(value).astype(np.complex128) + 1j,
    "none": lambda value: None,
    "dict": lambda value: {"values": value},
    "ragged": lambda value: [np.zeros(index % 3 + 1) for index in range(len(value))],
    "one_row_fewer": lambda value: np.asarray(value)[:-1],
    "no_rows": lambda value: np.asarray(value)[:0],
    "extra_axis": lambda value: np.asarray(value)[..., None],
    "last_axis_dropped": lambda value: np.asarray(value)[..., 0],
    "zero_columns": lambda value: np.asarray(value)[..., :0],
    "nan": lambda value: np.full(np.shape(value), np.nan),
    "huge": lambda value: np.full(np.shape(value), 1e30),
    "huge_int": lambda value: np.full(np.shape(value), 2**62, np.int64),
    "negative": lambda value: -np.abs(np.asarray(value, np.float64)) - 1,
    "fraction": lambda value: np.asarray(value, np.float64) + 0.5,
    "bool": lambda value: np.asarray(value).astype(bool),
    "float16": lambda value: np.asarray(value).astype(np.float16),
}
_FIELDS = ("id", "raw_text", "text_bert", "audio", "vision", "audio_lengths", "vision_lengths", "regression_labels")
# Corruptions whose outcome is known: an error naming the field as the reader reports it.
_MUST_FAIL = {
    ("text", "audio"), ("text", "vision"), ("text", "text_bert"), ("text", "regression_labels"), ("text", "audio_lengths"),
    ("numeric_text", "audio"), ("numeric_text", "regression_labels"), ("numeric_text", "audio_lengths"),
    ("complex", "audio"), ("complex", "vision"), ("complex", "regression_labels"), ("complex", "audio_lengths"),
    ("dict", "audio"), ("dict", "regression_labels"), ("ragged", "audio"), ("ragged", "audio_lengths"),
    ("none", "id"), ("none", "audio"), ("none", "regression_labels"), ("none", "text_bert"),
    ("one_row_fewer", "id"), ("one_row_fewer", "audio"), ("one_row_fewer", "audio_lengths"),
    ("one_row_fewer", "regression_labels"), ("one_row_fewer", "text_bert"),
    ("extra_axis", "audio"), ("extra_axis", "text_bert"), ("extra_axis", "id"), ("last_axis_dropped", "audio"),
    ("zero_columns", "audio"), ("zero_columns", "vision"),
    ("nan", "regression_labels"), ("nan", "audio_lengths"), ("nan", "text_bert"),
    ("huge", "regression_labels"), ("huge", "text_bert"), ("huge_int", "text_bert"),
    ("negative", "audio_lengths"), ("negative", "text_bert"), ("fraction", "audio_lengths"), ("fraction", "text_bert"),
    ("bool", "audio_lengths"),
}
# The part of the field name that each error contains; the reader renames regression_labels and text_bert.
_REPORTED_FIELD = {"regression_labels": "labels", "text_bert": "text_"}


@FUZZ
@given(split=st.sampled_from(SPLITS), field=st.sampled_from(_FIELDS), corruption=st.sampled_from(sorted(_CORRUPTIONS)))
def test_mmsa_field_corruption(tmp_path, options, vocab_size, real, split, field, corruption):
  data = _copy_mmsa(real.mmsa_data)
  try:
    data[split][field] = _CORRUPTIONS[corruption](real.mmsa_data[split][field])
  except (ValueError, TypeError, IndexError):
    reject()  # The corruption does not apply to this field, such as complex ids.
  folder = _write_mmsa(tmp_path / "mmsa", pickle.dumps(data, protocol=4))
  outcome = _read(folder, MMSA_FILE, options, vocab_size)
  if (corruption, field) in _MUST_FAIL:
    assert isinstance(outcome, DataError), f"{corruption} {field} was accepted"
    assert f"split '{split}'" in str(outcome)
    assert _REPORTED_FIELD.get(field, field) in str(outcome)


# Known repairs, with counts computed here.


@FUZZ
@given(
    split=st.sampled_from(SPLITS),
    modality=st.sampled_from(("audio", "vision")),
    positions=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, MAX_LEN - 1), st.integers(0, 10**6)), min_size=1, max_size=6),
    value=st.sampled_from((np.nan, np.inf, -np.inf)),
)
def test_non_finite_features_counted(tmp_path, options, vocab_size, real, caplog, split, modality, positions, value):
  data = _copy_mmsa(real.mmsa_data)
  frames = np.array(real.mmsa_data[split][modality], np.float32)
  rows = set()
  for row, frame, column in positions:
    row, column = row % frames.shape[0], column % frames.shape[2]
    frames[row, frame, column] = value
    rows.add(row)
  data[split][modality] = frames
  expected_count = int((~np.isfinite(frames)).sum())
  folder = _write_mmsa(tmp_path / "mmsa", pickle.dumps(data, protocol=4))
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    result = _read(folder, MMSA_FILE, options, vocab_size)
  assert not isinstance(result, DataError), result
  expected_log = f"split '{split}', field '{modality}': replaced {expected_count} NaN or inf values in {len(rows)} samples by 0"
  assert expected_log in caplog.text
  cleaned = result[split][modality]
  assert (cleaned[~np.isfinite(frames)] == 0).all()

  strict = ReadOptions(vocab_file=options.vocab_file, strict_features=True)
  error = _read(folder, MMSA_FILE, strict, vocab_size)
  assert isinstance(error, DataError)
  assert f"field '{modality}'" in str(error)


@FUZZ
@given(
    split=st.sampled_from(SPLITS),
    modality=st.sampled_from(("audio", "vision")),
    rows=st.sets(st.integers(0, 10), min_size=1, max_size=5),
    length=st.sampled_from((MAX_LEN + 1, 10**9, 2**62, 1e30)),
)
def test_huge_lengths_clamped(tmp_path, options, vocab_size, real, caplog, split, modality, rows, length):
  data = _copy_mmsa(real.mmsa_data)
  lengths = np.asarray(real.mmsa_data[split][f"{modality}_lengths"], np.float64).copy()
  rows = sorted(row % len(lengths) for row in rows)
  lengths[rows] = length
  data[split][f"{modality}_lengths"] = lengths
  stored = np.shape(real.mmsa_data[split][modality])[1]
  folder = _write_mmsa(tmp_path / "mmsa", pickle.dumps(data, protocol=4))
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    result = _read(folder, MMSA_FILE, options, vocab_size)
  assert not isinstance(result, DataError), result
  assert f"{len(rows)} lengths exceed the {stored} stored frames; clamped to {stored}" in caplog.text
  np.testing.assert_array_equal(result[split][f"{modality}_lengths"][rows], min(stored, MAX_LEN))


# Record-level damage of the MISA pickles.


def _replace_visual(record, visual):
  (word_ids, _, acoustic, words), label, segment = record
  return ((word_ids, visual, acoustic, words), label, segment)


def _replace_words(record, words):
  (word_ids, visual, acoustic, _), label, segment = record
  return ((word_ids, visual, acoustic, words), label, segment)


_RECORD_CORRUPTIONS = {
    "none": lambda record: None,
    "number": lambda record: 3,
    "text": lambda record: "abc",
    "two_parts": lambda record: record[:2],
    "four_parts": lambda record: tuple(record) + (1,),
    "label_text": lambda record: (record[0], "positive", record[2]),
    "label_none": lambda record: (record[0], None, record[2]),
    "label_nan": lambda record: (record[0], np.array([[np.nan]]), record[2]),
    "label_huge": lambda record: (record[0], np.array([[1e30]]), record[2]),
    "label_two": lambda record: (record[0], np.array([1.0, 2.0]), record[2]),
    "segment_bytes": lambda record: (record[0], record[1], b"\xff\xfe"),
    "segment_list": lambda record: (record[0], record[1], [1, 2]),
    "inner_two_parts": lambda record: ((record[0][0], record[0][1]), record[1], record[2]),
    "visual_text": lambda record: _replace_visual(record, np.full(np.shape(record[0][1]), "a")),
    "visual_flat": lambda record: _replace_visual(record, np.ravel(record[0][1])),
    "visual_3d": lambda record: _replace_visual(record, np.asarray(record[0][1])[None]),
    "visual_ragged": lambda record: _replace_visual(record, [[1.0, 2.0], [3.0]]),
    "visual_none": lambda record: _replace_visual(record, None),
    "visual_nan": lambda record: _replace_visual(record, np.full(np.shape(record[0][1]), np.nan)),
    "visual_beyond_float32": lambda record: _replace_visual(record, np.full(np.shape(record[0][1]), 1e300)),
    "visual_no_columns": lambda record: _replace_visual(record, np.zeros((3, 0))),
    "visual_wider": lambda record: _replace_visual(record, np.zeros((3, np.shape(record[0][1])[1] + 1))),
    "visual_complex": lambda record: _replace_visual(record, np.asarray(record[0][1]).astype(np.complex64)),
    "words_number": lambda record: _replace_words(record, 5),
    "words_string": lambda record: _replace_words(record, "hello"),
    "words_0d_array": lambda record: _replace_words(record, np.asarray("hello", dtype=object)),
    "words_mixed": lambda record: _replace_words(record, [1, 2.5, None, b"\xff"]),
    "words_long": lambda record: _replace_words(record, ["a" * 100_000] * 3),
    "words_many": lambda record: _replace_words(record, ["word"] * 100_000),
}
_RECORD_MUST_FAIL = {
    "none", "number", "text", "two_parts", "four_parts", "label_text", "label_none", "label_nan", "label_huge",
    "label_two", "inner_two_parts", "visual_text", "visual_flat", "visual_3d", "visual_ragged", "visual_none",
    "visual_no_columns", "visual_wider", "visual_complex", "words_number", "words_string", "words_0d_array",
}


@FUZZ
@given(name=st.sampled_from(MISA_FILES), index=st.integers(0, 10**6), corruption=st.sampled_from(sorted(_RECORD_CORRUPTIONS)))
def test_misa_record_corruption(tmp_path, options, vocab_size, real, name, index, corruption):
  records = list(real.misa_records[name])
  index %= len(records)
  records[index] = _RECORD_CORRUPTIONS[corruption](records[index])
  folder = _write_misa(tmp_path / "misa", real.misa_bytes, name, pickle.dumps(records, protocol=4))
  outcome = _read(folder, name, options, vocab_size)
  if corruption in _RECORD_MUST_FAIL:
    assert isinstance(outcome, DataError), f"{corruption} was accepted"


@FUZZ
@given(name=st.sampled_from(MISA_FILES), container=st.sampled_from((None, {"records": []}, [], "abc", 5, (1, 2))))
def test_misa_container_corruption(tmp_path, options, vocab_size, real, name, container):
  folder = _write_misa(tmp_path / "misa", real.misa_bytes, name, pickle.dumps(container, protocol=4))
  outcome = _read(folder, name, options, vocab_size)
  assert isinstance(outcome, DataError)


# Computational sequences (HDF5) written from the MISA samples, then damaged.


def _write_sequence(path, root, entries):
  with h5py.File(path, "w") as stream:
    data = stream.create_group(root).create_group("data")
    for key, (features, intervals) in entries.items():
      group = data.create_group(key)
      group.create_dataset("features", data=features)
      group.create_dataset("intervals", data=np.asarray(intervals, np.float64))


_CSD_FILES = {
    "words": ("CMU_MOSI_TimestampedWords.csd", "words"),
    "audio": ("CMU_MOSI_COVAREP.csd", "COVAREP"),
    "vision": ("CMU_MOSI_Visual_Facet_42.csd", "FACET 4.2"),
    "labels": ("CMU_MOSI_Opinion_Labels.csd", "Opinion Segment Labels"),
}


@pytest.fixture(scope="module")
def csd_bytes(tmp_path_factory, real):
  """Computational sequences with one entry per utterance, as file name -> bytes."""
  folder = tmp_path_factory.mktemp("csd")
  entries = {name: {} for name in _CSD_FILES}
  folds = {"train": set(), "valid": set(), "test": set()}
  for split, name in zip(SPLITS, MISA_FILES):
    for (_, visual, acoustic, words), label, segment in real.misa_records[name]:
      folds[split].add(segment.split("[")[0])
      starts = np.arange(len(words)) * 0.3
      intervals = np.stack([starts, starts + 0.3], axis=1)
      entries["words"][segment] = (np.asarray([word.encode() for word in words])[:, None], intervals)
      entries["audio"][segment] = (np.asarray(acoustic, np.float32), intervals)
      entries["vision"][segment] = (np.asarray(visual, np.float32), intervals)
      entries["labels"][segment] = (np.asarray(label, np.float32).reshape(1, 1), [(0.0, len(words) * 0.3)])
  for kind, (file_name, root) in _CSD_FILES.items():
    _write_sequence(folder / file_name, root, entries[kind])
  files = {path.name: path.read_bytes() for path in folder.iterdir()}
  files["splits.json"] = json.dumps({split: sorted(videos) for split, videos in folds.items()}).encode()
  return files


def _write_csd(folder, csd_bytes, damaged=None, payload=None):
  folder.mkdir(exist_ok=True)
  for name, data in csd_bytes.items():
    (folder / name).write_bytes(payload if name == damaged else data)
  return folder


def test_csd_copy_reads(tmp_path, options, vocab_size, csd_bytes):
  result = _read(_write_csd(tmp_path / "csd", csd_bytes), "", options, vocab_size)
  assert {split: len(arrays["id"]) for split, arrays in result.items()} == {"train": 114, "valid": 11, "test": 25}


@FUZZ
@given(
    damaged=st.sampled_from(sorted(file_name for file_name, _ in _CSD_FILES.values())),
    cut=st.none() | st.floats(0.0, 1.0, exclude_max=True),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(1, 255)), max_size=6),
    near_start=st.booleans(),
)
def test_damaged_csd_file(tmp_path, options, vocab_size, csd_bytes, damaged, cut, flips, near_start):
  payload = bytearray(csd_bytes[damaged])
  if cut is not None:
    payload = payload[: int(len(payload) * cut)]
  # The first 4 KiB hold the superblock and the root group's B-tree.
  span = min(len(payload), 4096) if near_start else len(payload)
  for position, mask in flips:
    if span:
      payload[int(position * span)] ^= mask
  folder = _write_csd(tmp_path / "csd", csd_bytes, damaged, bytes(payload))
  outcome = _read(folder, damaged, options, vocab_size)
  if cut is not None:
    assert isinstance(outcome, DataError)


# Pickles that would run code.


class _Payload:
  """Unpickles to `function(*args)`."""

  def __init__(self, function, *args):
    self.function = function
    self.args = args

  def __reduce__(self):
    return (self.function, self.args)


def _payloads(marker):
  """Pickle payloads that run a command, call dangerous builtins or allocate a huge buffer."""
  return {
      "os.system": _Payload(os.system, f"touch {marker}"),
      "subprocess.Popen": _Payload(subprocess.Popen, ["touch", str(marker)]),
      "builtins.exec": _Payload(exec, f"open({str(marker)!r}, 'w').close()"),
      "builtins.eval": _Payload(eval, f"open({str(marker)!r}, 'w')"),
      "builtins.open": _Payload(open, str(marker), "w"),
      "builtins.getattr": _Payload(getattr, _Payload(__import__, "os"), "system"),
      "builtins.__import__": _Payload(__import__, "os"),
      "builtins.bytes": _Payload(bytes, 10**10),
      "builtins.bytearray": _Payload(bytearray, 10**10),
      "_codecs.encode": _Payload(__import__("_codecs").encode, "payload", "zlib_codec"),
      "numpy.load": _Payload(np.load, str(marker)),
  }


@FUZZ
@given(
    payload_name=st.sampled_from(sorted(_payloads("x"))),
    protocol=st.integers(0, pickle.HIGHEST_PROTOCOL),
    target=st.sampled_from(("mmsa_top", "mmsa_field", "mmsa_nested", "misa_record", "misa_label")),
    split=st.sampled_from(SPLITS),
)
def test_pickle_payload_never_runs(tmp_path, options, vocab_size, real, payload_name, protocol, target, split):
  marker = tmp_path / "created_by_pickle"
  marker.unlink(missing_ok=True)
  payload = _payloads(marker)[payload_name]
  if target.startswith("mmsa"):
    data = _copy_mmsa(real.mmsa_data)
    if target == "mmsa_top":
      data["extra"] = payload
    elif target == "mmsa_field":
      data[split]["audio_lengths"] = payload
    else:
      data[split]["id"] = [data[split]["id"][0], payload]
    folder = _write_mmsa(tmp_path / "mmsa", pickle.dumps(data, protocol=protocol))
    damaged = MMSA_FILE
  else:
    damaged = MISA_FILES[SPLITS.index(split)]
    records = list(real.misa_records[damaged])
    first = records[0]
    records[0] = (first[0], payload, first[2]) if target == "misa_label" else payload
    folder = _write_misa(tmp_path / "misa", real.misa_bytes, damaged, pickle.dumps(records, protocol=protocol))

  with pytest.raises(safe_pickle.UnsafePickleError) as error:
    with _deadline(READ_DEADLINE_SECONDS):
      readers.read_manual_dir(str(folder), options=options)
  assert damaged in str(error.value)
  assert not marker.exists()


def test_payload_runs_under_plain_pickle(tmp_path):
  # The same construction does run the command under pickle.loads, so the rejection above matters.
  marker = tmp_path / "created_by_plain_pickle"
  data = pickle.dumps({"train": {"audio_lengths": _Payload(os.system, f"touch {marker}")}})
  code = "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"
  subprocess.run([sys.executable, "-c", code], input=data, check=True, timeout=60)
  assert marker.exists()
