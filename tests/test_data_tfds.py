"""Tests of the TFDS builders and `load_splits`: builds without TensorFlow, reuse and random access."""

import importlib.util
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from mcer_jax import data
from mcer_jax.data import pipeline
from mcer_jax.data import readers
from mcer_jax.data import tfds_builders

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mosi_config():
  spec = importlib.util.spec_from_file_location("mosi_config", os.path.join(REPO, "experiments", "mosi.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _config(manual_dir, data_dir, minilm, **data_overrides):
  config = _mosi_config()
  config.unlock()
  config.data.manual_dir = str(manual_dir)
  config.data.data_dir = str(data_dir)
  config.text_encoder.checkpoint = str(minilm)
  for key, value in data_overrides.items():
    config.data[key] = value
  config.lock()
  return config


@pytest.fixture(scope="module")
def built(tmp_path_factory, mosi_real, minilm):
  """Both layouts prepared into one data_dir: {layout: (sources, info, reader arrays)}."""
  data_dir = tmp_path_factory.mktemp("tfds")
  out = {}
  for layout in ("mmsa", "misa"):
    config = _config(mosi_real / layout, data_dir, minilm)
    sources, info = data.load_splits(config)
    arrays = readers.read_manual_dir(str(mosi_real / layout), options=data.read_options(config))
    out[layout] = (sources, info, arrays, config)
  return out


def test_tensorflow_absent(built):
  assert importlib.util.find_spec("tensorflow") is None
  assert "tensorflow" not in sys.modules


@pytest.mark.parametrize("layout", ["mmsa", "misa"])
def test_prepared_samples_equal_reader_arrays(built, layout):
  sources, info, arrays, _ = built[layout]
  assert set(sources) == {"train", "valid", "test"}
  for split, source in sources.items():
    assert len(source) == len(arrays[split]["id"])
    assert info.ids[split] == arrays[split]["id"].tolist()
    assert info.raw_texts[split] == arrays[split]["raw_text"].tolist()
    np.testing.assert_array_equal(source.text_lengths, arrays[split]["text_mask"].sum(axis=1))
    for row in range(len(source)):
      sample = source[row]
      assert set(sample) == set(arrays[split])
      for key, values in arrays[split].items():
        if key in ("id", "raw_text"):
          assert sample[key] == values[row], (split, row, key)
        else:
          assert sample[key].dtype == values[row].dtype, key
          np.testing.assert_array_equal(sample[key], values[row], err_msg=f"{split}/{row}/{key}")


def test_info_fields(built):
  _, info, _, _ = built["misa"]
  assert info.name == "mosi"
  assert info.feature_dims == {"text": None, "audio": 74, "vision": 47}
  assert info.max_lengths == {"text": 50, "audio": 50, "vision": 50}
  assert info.num_samples == {"train": 114, "valid": 11, "test": 25}
  assert info.label_range == 3.0
  assert not info.has_unimodal_labels


def test_layouts_prepare_identical_samples(built):
  mmsa_sources, mmsa_info, _, _ = built["mmsa"]
  misa_sources, misa_info, _, _ = built["misa"]
  for split in ("train", "test"):
    rows = {sample_id: row for row, sample_id in enumerate(misa_info.ids[split])}
    for mmsa_row, mmsa_id in enumerate(mmsa_info.ids[split]):
      video, clip = mmsa_id.split("$_$")
      a = mmsa_sources[split][mmsa_row]
      b = misa_sources[split][rows[f"{video}[{clip}]"]]
      for key in ("text_ids", "audio", "vision", "labels", "audio_lengths"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=f"{mmsa_id}/{key}")


def test_second_load_reuses_data(built, caplog):
  _, _, _, config = built["mmsa"]
  path = tfds_builders.prepare(
      "mosi", config.data.manual_dir, config.data.data_dir, options=data.read_options(config)
  )
  stamp = os.path.getmtime(os.path.join(path, "dataset_info.json"))
  with caplog.at_level(logging.INFO):
    sources, _ = data.load_splits(config)
  assert "Reusing the prepared mosi data" in caplog.text
  assert os.path.getmtime(os.path.join(path, "dataset_info.json")) == stamp
  assert len(sources["train"]) == 114


def test_config_name_tracks_settings(mosi_real, minilm, tmp_path):
  vocab = str(minilm / "vocab.txt")
  base = data.ReadOptions(vocab_file=vocab)
  misa = tfds_builders.release_config(str(mosi_real / "misa"), options=base).name
  mmsa = tfds_builders.release_config(str(mosi_real / "mmsa"), options=base).name
  assert misa.startswith("misa_")
  assert mmsa.startswith("mmsa_unaligned_50_")

  # A different vocabulary changes the tokenised layouts only.
  other_vocab = tmp_path / "vocab.txt"
  other_vocab.write_text((minilm / "vocab.txt").read_text(encoding="utf-8") + "extra\n", encoding="utf-8")
  other = data.ReadOptions(vocab_file=str(other_vocab))
  assert tfds_builders.release_config(str(mosi_real / "misa"), options=other).name != misa
  assert tfds_builders.release_config(str(mosi_real / "mmsa"), options=other).name == mmsa

  shorter = data.ReadOptions(vocab_file=vocab, max_text_len=40)
  assert tfds_builders.release_config(str(mosi_real / "misa"), options=shorter).name != misa
  assert tfds_builders.release_config(str(mosi_real / "mmsa"), options=shorter).name != mmsa
  strict = data.ReadOptions(vocab_file=vocab, strict_features=True)
  assert tfds_builders.release_config(str(mosi_real / "mmsa"), options=strict).name != mmsa


def test_pipeline_over_prepared_source(built):
  sources, _, arrays, _ = built["misa"]
  batches = list(pipeline.epoch_batches(
      sources["test"], batch_size=8, seed=0, epoch=1, shuffle=True, num_devices=2, text_buckets=(16, 24, 32, 50)
  ))
  assert len(batches) == 4
  seen = []
  for batch in batches:
    index = batch["index"].reshape(-1)[batch["weight"].reshape(-1) == 1]
    seen.extend(index.tolist())
    assert batch["audio"].shape[-2:] == (50, 74)
    assert batch["text_ids"].shape[-1] in (16, 24, 32, 50)
  assert sorted(seen) == list(range(25))


def test_unknown_dataset_name(mosi_real, minilm, tmp_path):
  config = _config(mosi_real / "mmsa", tmp_path, minilm, name="iemocap")
  with pytest.raises(data.DataError, match="no TFDS builder for dataset 'iemocap'"):
    data.load_splits(config)


def test_empty_manual_dir_setting(minilm, tmp_path):
  config = _config("", tmp_path, minilm)
  with pytest.raises(data.DataError, match="config.data.manual_dir is empty"):
    data.load_splits(config)


def test_prepare_data_tool(mosi_real, tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO)
  command = [
      sys.executable, os.path.join(REPO, "tools", "prepare_data.py"),
      "--config", os.path.join(REPO, "experiments", "mosi.py"),
      f"--config.data.manual_dir={mosi_real / 'mmsa'}",
      f"--config.data.data_dir={tmp_path}",
  ]
  result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Preparing mosi from" in result.stderr
  assert "train: 114 samples." in result.stderr
  prepared = [name for name in os.listdir(tmp_path / "mosi") if name.startswith("mmsa_unaligned_50_")]
  assert len(prepared) == 1
  assert os.path.exists(tmp_path / "mosi" / prepared[0] / "1.0.0" / "mosi-train.array_record-00000-of-00001")


def test_config_name_tracks_file_contents(mosi_real, minilm, tmp_path):
  options = data.ReadOptions(vocab_file=str(minilm / "vocab.txt"))
  original = tfds_builders.release_config(str(mosi_real / "mmsa"), options=options).name
  copy = tmp_path / "mmsa"
  copy.mkdir()
  content = bytearray((mosi_real / "mmsa" / "unaligned_50.pkl").read_bytes())
  (copy / "unaligned_50.pkl").write_bytes(bytes(content))
  assert tfds_builders.release_config(str(copy), options=options).name == original
  # Same name and size, one byte changed near the end (inside the pickled arrays).
  content[-100] ^= 0xFF
  (copy / "unaligned_50.pkl").write_bytes(bytes(content))
  assert tfds_builders.release_config(str(copy), options=options).name != original
