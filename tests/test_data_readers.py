"""Tests of the release readers on the real MOSI samples and on corrupted copies of them."""

import json
import logging
import pickle
import shutil
import sys

import h5py
import numpy as np
import pytest

from mcer_jax.data import csd
from mcer_jax.data import readers
from mcer_jax.data import safe_pickle
from mcer_jax.data.errors import DataError
from mcer_jax.data.normalize import ReadOptions

SEP_ID = 102  # [SEP] in the uncased BERT vocabulary.


@pytest.fixture(scope="module")
def options(minilm):
  return ReadOptions(vocab_file=str(minilm / "vocab.txt"))


@pytest.fixture(scope="module")
def mmsa(mosi_real, options):
  return readers.read_manual_dir(str(mosi_real / "mmsa"), options=options)


@pytest.fixture(scope="module")
def misa(mosi_real, options):
  return readers.read_manual_dir(str(mosi_real / "misa"), options=options)


def _misa_id(mmsa_id: str) -> str:
  video, clip = mmsa_id.split("$_$")
  return f"{video}[{clip}]"


def _rows_by_id(arrays, ids):
  position = {sample_id: row for row, sample_id in enumerate(arrays["id"])}
  return np.asarray([position[sample_id] for sample_id in ids])


def _assert_same_samples(expected, actual, key_of=lambda sample_id: sample_id):
  """Checks that two split dicts hold the same samples, matched by id."""
  assert set(expected) == set(actual)
  for split in expected:
    rows = _rows_by_id(actual[split], [key_of(i) for i in expected[split]["id"]])
    assert len(rows) == len(actual[split]["id"])
    for key, values in expected[split].items():
      if key == "id":
        continue
      np.testing.assert_array_equal(values, actual[split][key][rows], err_msg=f"{split}/{key}")


def _load_mmsa(mosi_real):
  return safe_pickle.load(mosi_real / "mmsa" / "unaligned_50.pkl")


def _write_mmsa(tmp_path, data, name="unaligned_50.pkl"):
  folder = tmp_path / "mmsa"
  folder.mkdir(exist_ok=True)
  with open(folder / name, "wb") as stream:
    pickle.dump(data, stream)
  return folder


def _misa_copy(tmp_path, mosi_real):
  folder = tmp_path / "misa"
  shutil.copytree(mosi_real / "misa", folder)
  for path in folder.iterdir():
    path.chmod(0o644)
  return folder


def _rewrite_misa(folder, name, change):
  records = safe_pickle.load(folder / name)
  records = change(records)
  with open(folder / name, "wb") as stream:
    pickle.dump(records, stream)


def test_both_layouts_same_150_samples(mmsa, misa):
  assert {split: len(arrays["id"]) for split, arrays in mmsa.items()} == {"train": 114, "valid": 11, "test": 25}
  # Text ids equal too: MISA's words tokenised here give MMSA's text_bert exactly.
  _assert_same_samples(mmsa, misa, key_of=_misa_id)


def test_mmsa_shapes_and_feature_sizes(mmsa):
  train = mmsa["train"]
  assert train["text_ids"].shape == (114, 50)
  assert train["text_ids"].dtype == np.int32
  assert train["audio"].shape == (114, 50, 74)
  assert train["vision"].shape == (114, 50, 47)
  assert train["audio_lengths"].dtype == np.int32
  assert train["labels"].dtype == np.float32
  assert "labels_t" not in train


def test_mmsa_values_match_file(mosi_real, mmsa):
  raw = _load_mmsa(mosi_real)["test"]
  test = mmsa["test"]
  np.testing.assert_array_equal(test["text_ids"], raw["text_bert"][:, 0].astype(np.int32))
  np.testing.assert_array_equal(test["audio"], raw["audio"])
  np.testing.assert_array_equal(test["audio_lengths"], raw["audio_lengths"])
  np.testing.assert_array_equal(test["labels"], raw["regression_labels"])
  assert test["id"].tolist() == raw["id"].tolist()


def test_misa_lengths_are_word_counts(mosi_real, misa):
  records = safe_pickle.load(mosi_real / "misa" / "train.pkl")
  rows = _rows_by_id(misa["train"], [record[2] for record in records])
  word_counts = np.asarray([len(record[0][3]) for record in records])
  np.testing.assert_array_equal(misa["train"]["audio_lengths"][rows], np.minimum(word_counts, 50))
  np.testing.assert_array_equal(misa["train"]["vision_lengths"][rows], np.minimum(word_counts, 50))
  first = records[0]
  assert misa["train"]["raw_text"][rows[0]] == " ".join(first[0][3])
  np.testing.assert_array_equal(misa["train"]["audio"][rows[0], : len(first[0][2])], first[0][2])


def test_both_layouts_agree_when_truncated(mosi_real, minilm):
  short = ReadOptions(vocab_file=str(minilm / "vocab.txt"), max_text_len=8, max_audio_len=10, max_vision_len=6)
  mmsa = readers.read_manual_dir(str(mosi_real / "mmsa"), options=short)
  misa = readers.read_manual_dir(str(mosi_real / "misa"), options=short)
  _assert_same_samples(mmsa, misa, key_of=_misa_id)
  train = mmsa["train"]
  assert train["text_ids"].shape == (114, 8)
  assert train["audio"].shape == (114, 10, 74)
  long_text = train["text_mask"].sum(axis=1) == 8
  assert long_text.any()
  assert (train["text_ids"][long_text, 7] == SEP_ID).all()
  assert train["audio_lengths"].max() == 10


def test_mmsa_missing_lengths_inferred(tmp_path, mosi_real, mmsa, options, caplog):
  data = _load_mmsa(mosi_real)
  for split in data:
    del data[split]["audio_lengths"]
    data[split]["vision_lengths"] = np.asarray(data[split]["vision_lengths"])
  folder = _write_mmsa(tmp_path, data)
  with caplog.at_level(logging.INFO):
    result = readers.read_manual_dir(str(folder), options=options)
  assert "inferred them from the last non-zero frame" in caplog.text
  for split in result:
    np.testing.assert_array_equal(result[split]["audio_lengths"], mmsa[split]["audio_lengths"])
    np.testing.assert_array_equal(result[split]["vision_lengths"], mmsa[split]["vision_lengths"])


def test_mmsa_text_features(tmp_path, mosi_real, options):
  data = _load_mmsa(mosi_real)
  rng = np.random.default_rng(0)
  expected_lengths = {}
  for split, fields in data.items():
    mask = fields.pop("text_bert")[:, 1]
    features = rng.normal(size=mask.shape + (8,)).astype(np.float32) * mask[:, :, None]
    fields["text"] = features
    expected_lengths[split] = mask.sum(axis=1)
  folder = _write_mmsa(tmp_path, data)
  result = readers.read_manual_dir(str(folder), options=options)
  for split, fields in result.items():
    assert "text_ids" not in fields
    assert fields["text_features"].shape == (len(fields["id"]), 50, 8)
    np.testing.assert_array_equal(fields["text_mask"].sum(axis=1), expected_lengths[split])
    np.testing.assert_array_equal(fields["text_features"], data[split]["text"])


def test_mmsa_unimodal_labels(tmp_path, mosi_real, options):
  data = _load_mmsa(mosi_real)
  for fields in data.values():
    labels = fields["regression_labels"]
    fields["regression_labels_T"] = labels / 3
    fields["regression_labels_A"] = -labels / 3
    fields["regression_labels_V"] = np.zeros_like(labels)
  folder = _write_mmsa(tmp_path, data)
  result = readers.read_manual_dir(str(folder), options=options)
  np.testing.assert_allclose(result["valid"]["labels_t"], data["valid"]["regression_labels"] / 3)
  np.testing.assert_allclose(result["valid"]["labels_a"], -data["valid"]["regression_labels"] / 3)
  np.testing.assert_array_equal(result["test"]["labels_v"], 0)


def test_non_finite_features_replaced_and_counted(tmp_path, mosi_real, mmsa, options, caplog):
  data = _load_mmsa(mosi_real)
  data["train"]["audio"][2, 0, 5] = -np.inf
  data["train"]["audio"][7, 1, 0] = np.nan
  data["valid"]["vision"][1, 0, 3] = np.nan
  folder = _write_mmsa(tmp_path, data)
  with caplog.at_level(logging.WARNING):
    result = readers.read_manual_dir(str(folder), options=options)
  assert "field 'audio': replaced 2 NaN or inf values in 2 samples by 0" in caplog.text
  assert "field 'vision': replaced 1 NaN or inf values in 1 samples by 0" in caplog.text
  assert result["train"]["audio"][2, 0, 5] == 0
  assert result["valid"]["vision"][1, 0, 3] == 0
  unchanged = np.ones(114, bool)
  unchanged[[2, 7]] = False
  np.testing.assert_array_equal(result["train"]["audio"][unchanged], mmsa["train"]["audio"][unchanged])


def test_non_finite_features_strict_error(tmp_path, mosi_real, options):
  data = _load_mmsa(mosi_real)
  data["train"]["audio"][2, 0, 5] = -np.inf
  folder = _write_mmsa(tmp_path, data)
  strict = ReadOptions(vocab_file=options.vocab_file, strict_features=True)
  with pytest.raises(DataError) as error:
    readers.read_manual_dir(str(folder), options=strict)
  message = str(error.value)
  assert "unaligned_50.pkl" in message
  assert "split 'train'" in message
  assert "field 'audio'" in message
  assert "sample 'WKA5OygbEKI$_$2'" in message


def test_misa_non_finite_strict_error(tmp_path, mosi_real, options):
  folder = _misa_copy(tmp_path, mosi_real)

  def poison(records):
    (word_ids, visual, acoustic, words), label, segment = records[3]
    acoustic = acoustic.copy()
    acoustic[0, 0] = np.nan
    records[3] = ((word_ids, visual, acoustic, words), label, segment)
    return records

  _rewrite_misa(folder, "dev.pkl", poison)
  strict = ReadOptions(vocab_file=options.vocab_file, strict_features=True)
  with pytest.raises(DataError, match=r"dev\.pkl, split 'valid', field 'audio', sample 'X3j2zQgwYgE\[3\]'"):
    readers.read_manual_dir(str(folder), options=strict)


def test_zero_length_repaired_to_one(tmp_path, mosi_real, options, caplog):
  data = _load_mmsa(mosi_real)
  data["train"]["audio_lengths"][0] = 0
  data["train"]["audio_lengths"][5] = 0
  folder = _write_mmsa(tmp_path, data)
  with caplog.at_level(logging.WARNING):
    result = readers.read_manual_dir(str(folder), options=options)
  assert "split 'train', field 'audio': 2 samples have no frames" in caplog.text
  assert result["train"]["audio_lengths"][0] == 1
  assert result["train"]["audio_lengths"][5] == 1
  np.testing.assert_array_equal(result["train"]["audio"][0, 1:], 0)
  np.testing.assert_array_equal(result["train"]["audio"][0, 0], data["train"]["audio"][0, 0])


def test_misa_empty_sequence_gets_one_zero_frame(tmp_path, mosi_real, options, caplog):
  folder = _misa_copy(tmp_path, mosi_real)

  def empty_visual(records):
    (word_ids, visual, acoustic, words), label, segment = records[0]
    records[0] = ((word_ids, visual[:0], acoustic, words), label, segment)
    return records

  _rewrite_misa(folder, "test.pkl", empty_visual)
  with caplog.at_level(logging.WARNING):
    result = readers.read_manual_dir(str(folder), options=options)
  assert "split 'test', field 'vision': 1 samples have no frames" in caplog.text
  row = _rows_by_id(result["test"], ["bvLlb-M3UXU[0]"])[0]
  assert result["test"]["vision_lengths"][row] == 1
  np.testing.assert_array_equal(result["test"]["vision"][row], 0)


@pytest.mark.parametrize("value", [3.5, -4.0, np.nan])
def test_label_outside_range_error(tmp_path, mosi_real, options, value):
  data = _load_mmsa(mosi_real)
  data["test"]["regression_labels"][4] = value
  folder = _write_mmsa(tmp_path, data)
  with pytest.raises(DataError) as error:
    readers.read_manual_dir(str(folder), options=options)
  message = str(error.value)
  assert "unaligned_50.pkl, split 'test', field 'labels', sample 'bvLlb-M3UXU$_$4'" in message
  assert f"label {value}" in message


def test_label_range_option(tmp_path, mosi_real, minilm):
  narrow = ReadOptions(vocab_file=str(minilm / "vocab.txt"), label_range=1.0)
  with pytest.raises(DataError, match=r"outside \[-1.0, 1.0\]"):
    readers.read_manual_dir(str(mosi_real / "misa"), options=narrow)


def test_feature_size_differs_between_splits(tmp_path, mosi_real, options):
  data = _load_mmsa(mosi_real)
  data["valid"]["audio"] = data["valid"]["audio"][:, :, :73]
  folder = _write_mmsa(tmp_path, data)
  with pytest.raises(DataError, match=r"'audio' has shape \(50, 74\) per sample in split 'train' but \(50, 73\) in split 'valid'"):
    readers.read_manual_dir(str(folder), options=options)


def test_misa_feature_size_differs_between_splits(tmp_path, mosi_real, options):
  folder = _misa_copy(tmp_path, mosi_real)

  def narrow(records):
    return [((w, v, a[:, :70], words), label, segment) for (w, v, a, words), label, segment in records]

  _rewrite_misa(folder, "test.pkl", narrow)
  with pytest.raises(DataError, match=r"split 'train' but \(50, 70\) in split 'test'"):
    readers.read_manual_dir(str(folder), options=options)


def test_mmsa_missing_split(tmp_path, mosi_real, options):
  data = _load_mmsa(mosi_real)
  del data["test"]
  folder = _write_mmsa(tmp_path, data)
  with pytest.raises(DataError, match=r"missing split\(s\) \['test'\]"):
    readers.read_manual_dir(str(folder), options=options)


def test_misa_missing_split(tmp_path, mosi_real, options):
  folder = _misa_copy(tmp_path, mosi_real)
  (folder / "dev.pkl").unlink()
  with pytest.raises(DataError, match="missing the valid split"):
    readers.read_manual_dir(str(folder), options=options)


@pytest.mark.parametrize("key", ["regression_labels", "id", "audio"])
def test_mmsa_missing_key(tmp_path, mosi_real, options, key):
  data = _load_mmsa(mosi_real)
  del data["valid"][key]
  folder = _write_mmsa(tmp_path, data)
  with pytest.raises(DataError, match=f"split 'valid': missing key '{key}'"):
    readers.read_manual_dir(str(folder), options=options)


def test_mmsa_missing_text(tmp_path, mosi_real, options):
  data = _load_mmsa(mosi_real)
  del data["train"]["text_bert"]
  folder = _write_mmsa(tmp_path, data)
  with pytest.raises(DataError, match="missing key 'text_bert'"):
    readers.read_manual_dir(str(folder), options=options)


def test_mmsa_fractional_token_ids(tmp_path, mosi_real, options):
  data = _load_mmsa(mosi_real)
  data["train"]["text_bert"][0, 0, 1] += 0.5
  folder = _write_mmsa(tmp_path, data)
  with pytest.raises(DataError, match="field 'text_ids': expected non-negative whole numbers"):
    readers.read_manual_dir(str(folder), options=options)


def test_mmsa_ids_outside_vocab(tmp_path, mosi_real, minilm):
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("".join(line for line in open(minilm / "vocab.txt", encoding="utf-8").readlines()[:1000]), encoding="utf-8")
  small = ReadOptions(vocab_file=str(vocab))
  with pytest.raises(DataError, match="outside the 1000-entry vocabulary"):
    readers.read_manual_dir(str(mosi_real / "mmsa"), options=small)


def test_empty_mmsa_file(tmp_path, options):
  folder = tmp_path / "mmsa"
  folder.mkdir()
  (folder / "unaligned_50.pkl").write_bytes(b"")
  with pytest.raises(DataError, match=r"unaligned_50\.pkl: the file is empty"):
    readers.read_manual_dir(str(folder), options=options)


def test_truncated_misa_file(tmp_path, mosi_real, options):
  folder = _misa_copy(tmp_path, mosi_real)
  data = (folder / "train.pkl").read_bytes()
  (folder / "train.pkl").write_bytes(data[:1000])
  with pytest.raises(DataError, match=r"train\.pkl: cannot unpickle the file .* truncated"):
    readers.read_manual_dir(str(folder), options=options)


def test_misa_bad_record(tmp_path, mosi_real, options):
  folder = _misa_copy(tmp_path, mosi_real)
  _rewrite_misa(folder, "dev.pkl", lambda records: records[:2] + [("only", "two")] + records[3:])
  with pytest.raises(DataError, match=r"dev\.pkl, record 2: expected \(\(word_ids, visual, acoustic, words\), label, segment_id\)"):
    readers.read_manual_dir(str(folder), options=options)


def test_misa_needs_vocab(mosi_real):
  with pytest.raises(DataError, match="config.text_encoder.checkpoint"):
    readers.read_manual_dir(str(mosi_real / "misa"), options=ReadOptions())


def test_unknown_layout_lists_what_it_looked_for(tmp_path, options):
  (tmp_path / "readme.txt").write_text("nothing here")
  with pytest.raises(DataError) as error:
    readers.read_manual_dir(str(tmp_path), options=options)
  message = str(error.value)
  assert "no known layout" in message
  for expected in ("unaligned_50.pkl", "train.pkl, dev.pkl, test.pkl", "*.csd", "readme.txt"):
    assert expected in message


def test_layout_detection(tmp_path, mosi_real):
  assert readers.resolve_layout(str(mosi_real / "mmsa")).name == "mmsa"
  assert readers.resolve_layout(str(mosi_real / "misa")).name == "misa"
  assert readers.resolve_layout(str(mosi_real / "misa"), "misa").files[1].endswith("dev.pkl")
  with pytest.raises(DataError, match="no files of that layout"):
    readers.resolve_layout(str(mosi_real / "misa"), "mmsa")


def test_layout_several_mmsa_files(tmp_path, mosi_real, mmsa, options):
  folder = tmp_path / "mmsa"
  folder.mkdir()
  shutil.copy(mosi_real / "mmsa" / "unaligned_50.pkl", folder / "unaligned_50.pkl")
  shutil.copy(mosi_real / "mmsa" / "unaligned_50.pkl", folder / "aligned_50.pkl")
  with pytest.raises(DataError, match="set config.data.mmsa_file"):
    readers.read_manual_dir(str(folder), options=options)
  chosen = readers.read_manual_dir(str(folder), options=options, mmsa_file="aligned_50.pkl")
  np.testing.assert_array_equal(chosen["test"]["audio"], mmsa["test"]["audio"])


def test_layout_mixed_folder(tmp_path, mosi_real, options):
  folder = _misa_copy(tmp_path, mosi_real)
  shutil.copy(mosi_real / "mmsa" / "unaligned_50.pkl", folder / "unaligned_50.pkl")
  with pytest.raises(DataError, match=r"several layouts found \(misa, mmsa\); set config.data.layout"):
    readers.read_manual_dir(str(folder), options=options)
  result = readers.read_manual_dir(str(folder), "misa", options=options)
  assert len(result["train"]["id"]) == 114


# --- CMU-MultimodalSDK computational sequences -------------------------------

WORD_SECONDS = 0.3
GAP_SECONDS = 1.0


def _write_sequence(path, root, entries):
  with h5py.File(path, "w") as stream:
    data = stream.create_group(root).create_group("data")
    for key, (features, intervals) in entries.items():
      group = data.create_group(key)
      group.create_dataset("features", data=features)
      group.create_dataset("intervals", data=np.asarray(intervals, np.float64))
    stream[root].create_group("metadata")


def _write_csd_folder(folder, mosi_real, utterance_keyed_video):
  """Writes the MISA samples as computational sequences on one timeline per video.

  Every word gets its own interval, and audio and vision frames share the word
  intervals. A silence ("sp") word with its own audio and vision frame sits
  between utterances and must not land in any utterance. Another "sp" word
  inside each utterance must not reach the transcript.
  """
  folder.mkdir()
  videos: dict[str, list] = {}
  folds = {"train": set(), "valid": set(), "test": set()}
  for split, name in (("train", "train.pkl"), ("valid", "dev.pkl"), ("test", "test.pkl")):
    for (_, visual, acoustic, words), label, segment in safe_pickle.load(mosi_real / "misa" / name):
      video, clip = segment[:-1].split("[")
      videos.setdefault(video, []).append((int(clip), visual, acoustic, words, float(np.asarray(label).reshape(-1)[0])))
      folds[split].add(video)

  words_entries, audio_entries, vision_entries, label_entries = {}, {}, {}, {}
  rng = np.random.default_rng(0)
  for video, utterances in videos.items():
    utterances.sort(key=lambda item: item[0])
    time = 0.0
    word_rows, word_intervals, audio_rows, vision_rows, frame_intervals, labels, label_intervals = [], [], [], [], [], [], []
    for clip, visual, acoustic, words, label in utterances:
      start = time
      word_rows.append(b"sp")  # A pause inside the utterance: no text, no frames.
      word_intervals.append((start, start))
      for index, word in enumerate(words):
        interval = (time, time + WORD_SECONDS)
        word_rows.append(word.encode())
        word_intervals.append(interval)
        audio_rows.append(acoustic[index])
        vision_rows.append(visual[index])
        frame_intervals.append(interval)
        time += WORD_SECONDS
      labels.append([label])
      label_intervals.append((start, time))
      silence = (time + 0.1, time + GAP_SECONDS - 0.1)
      word_rows.append(b"sp")
      word_intervals.append(silence)
      audio_rows.append(rng.normal(size=acoustic.shape[1]).astype(np.float32))
      vision_rows.append(rng.normal(size=visual.shape[1]).astype(np.float32))
      frame_intervals.append(silence)
      time += GAP_SECONDS
    words_entries[video] = (np.asarray(word_rows)[:, None], word_intervals)
    audio_entries[video] = (np.stack(audio_rows), frame_intervals)
    vision_entries[video] = (np.stack(vision_rows), frame_intervals)
    if video == utterance_keyed_video:
      for clip, (label, interval) in enumerate(zip(labels, label_intervals)):
        label_entries[f"{video}[{clip}]"] = (np.asarray([label], np.float32), [interval])
    else:
      label_entries[video] = (np.asarray(labels, np.float32), label_intervals)

  _write_sequence(folder / "CMU_MOSI_TimestampedWords.csd", "words", words_entries)
  _write_sequence(folder / "CMU_MOSI_COVAREP.csd", "COVAREP", audio_entries)
  _write_sequence(folder / "CMU_MOSI_Visual_Facet_42.csd", "FACET 4.2", vision_entries)
  _write_sequence(folder / "CMU_MOSI_Opinion_Labels.csd", "Opinion Segment Labels", label_entries)
  return {split: sorted(videos) for split, videos in folds.items()}


@pytest.fixture(scope="module")
def csd_folder(tmp_path_factory, mosi_real):
  folder = tmp_path_factory.mktemp("csd") / "MOSI"
  folds = _write_csd_folder(folder, mosi_real, utterance_keyed_video="bvLlb-M3UXU")
  (folder / csd.SPLITS_FILE).write_text(json.dumps({"train": folds["train"], "dev": folds["valid"], "test": folds["test"]}))
  return folder


def test_csd_matches_misa(csd_folder, misa, options):
  assert readers.resolve_layout(str(csd_folder)).name == "csd"
  result = readers.read_manual_dir(str(csd_folder), options=options)
  assert {split: len(arrays["id"]) for split, arrays in result.items()} == {"train": 114, "valid": 11, "test": 25}
  _assert_same_samples(misa, result)


def _copy_without_splits(csd_folder, tmp_path):
  folder = tmp_path / "csd"
  shutil.copytree(csd_folder, folder)
  (folder / csd.SPLITS_FILE).unlink()
  return folder


def test_csd_without_splits_file(csd_folder, tmp_path, options, monkeypatch):
  folder = _copy_without_splits(csd_folder, tmp_path)
  monkeypatch.setitem(sys.modules, "mmsdk", None)  # No CMU-MultimodalSDK installed.
  with pytest.raises(DataError, match="no splits.json found"):
    readers.read_manual_dir(str(folder), options=options)


def test_csd_standard_folds_from_mmsdk(csd_folder, tmp_path, misa, options, monkeypatch):
  # A stand-in for CMU-MultimodalSDK's module of standard folds.
  folder = _copy_without_splits(csd_folder, tmp_path)
  package = tmp_path / "fake_sdk"
  module_dir = package / "mmsdk" / "mmdatasdk" / "dataset" / "standard_datasets" / "CMU_MOSI"
  module_dir.mkdir(parents=True)
  for parent in [module_dir, *module_dir.parents]:
    if parent == package:
      break
    (parent / "__init__.py").write_text("")
  folds = {split: sorted({sample_id.split("[")[0] for sample_id in misa[split]["id"]}) for split in misa}
  (module_dir / "cmu_mosi_std_folds.py").write_text(
      "".join(f"standard_{split}_fold = {videos!r}\n" for split, videos in folds.items())
  )
  monkeypatch.syspath_prepend(str(package))
  for name in [name for name in sys.modules if name.startswith("mmsdk")]:
    monkeypatch.delitem(sys.modules, name)
  result = readers.read_manual_dir(str(folder), options=options)
  _assert_same_samples(misa, result)


def test_csd_missing_sequence(csd_folder, tmp_path, options):
  folder = tmp_path / "csd"
  shutil.copytree(csd_folder, folder)
  (folder / "CMU_MOSI_COVAREP.csd").unlink()
  with pytest.raises(DataError, match=r"no audio computational sequence found; expected a .csd file whose name contains one of \['covarep', 'opensmile'\]"):
    readers.read_manual_dir(str(folder), options=options)


def test_csd_truncated_file(csd_folder, tmp_path, options):
  folder = tmp_path / "csd"
  shutil.copytree(csd_folder, folder)
  path = folder / "CMU_MOSI_Visual_Facet_42.csd"
  path.write_bytes(path.read_bytes()[:2000])
  with pytest.raises(DataError, match=r"CMU_MOSI_Visual_Facet_42\.csd: cannot open as HDF5"):
    readers.read_manual_dir(str(folder), options=options)


def test_csd_unassigned_videos_dropped_with_count(csd_folder, tmp_path, options, caplog):
  folder = tmp_path / "csd"
  shutil.copytree(csd_folder, folder)
  folds = json.loads((folder / csd.SPLITS_FILE).read_text())
  folds["train"].remove("ZAIRrfG22O0")  # 9 utterances.
  (folder / csd.SPLITS_FILE).write_text(json.dumps(folds))
  with caplog.at_level(logging.WARNING):
    result = readers.read_manual_dir(str(folder), options=options)
  assert "dropped 9 labelled utterances whose video is in no split" in caplog.text
  assert len(result["train"]["id"]) == 105
