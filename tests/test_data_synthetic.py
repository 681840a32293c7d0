"""Tests of the synthetic demo data: determinism, shapes, and labels that need all three modalities."""

import importlib.util
import pathlib

import numpy as np
import pytest

from mcer_jax import data
from mcer_jax.data import synthetic

DEMO_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "demo.py"


@pytest.fixture(scope="module")
def config():
  spec = importlib.util.spec_from_file_location("demo_config", DEMO_CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.fixture(scope="module")
def splits(config):
  return synthetic.make_splits(config)


def _with(config, changes):
  """Returns a copy of `config` with {"section.key": value} changes."""
  copy = config.copy_and_resolve_references()
  copy.unlock()
  for dotted, value in changes.items():
    *sections, key = dotted.split(".")
    node = copy
    for section in sections:
      node = node[section]
    node[key] = value
  return copy


def test_sizes_and_shapes(config, splits):
  num = config.data.num_synthetic
  assert {split: len(arrays["id"]) for split, arrays in splits.items()} == {"train": num, "valid": num // 4, "test": num // 4}
  train = splits["train"]
  assert train["text_ids"].shape == (num, config.data.max_text_len)
  assert train["audio"].shape == (num, config.data.max_audio_len, 5)
  assert train["vision"].shape == (num, config.data.max_vision_len, 20)
  assert train["text_ids"].max() < config.text_encoder.random_init.vocab_size
  assert train["labels"].dtype == np.float32
  assert np.abs(train["labels"]).max() <= config.data.label_range


def test_lengths_vary_and_padding_is_zero(splits):
  train = splits["train"]
  for modality in ("audio", "vision"):
    lengths = train[f"{modality}_lengths"]
    assert lengths.min() >= 1
    assert len(np.unique(lengths)) > 3
    beyond = np.arange(train[modality].shape[1])[None, :] >= lengths[:, None]
    assert (train[modality][beyond] == 0).all()
  text_lengths = train["text_mask"].sum(axis=1)
  assert len(np.unique(text_lengths)) > 3
  assert (train["text_ids"][np.arange(len(text_lengths)), text_lengths - 1] == synthetic.SEP_ID).all()
  assert (train["text_ids"][:, 0] == synthetic.CLS_ID).all()


def test_deterministic_per_seed(config, splits):
  again = synthetic.make_splits(config)
  for split in splits:
    for key in splits[split]:
      np.testing.assert_array_equal(splits[split][key], again[split][key])
  other = synthetic.make_splits(_with(config, {"seed": config.seed + 1}))
  assert not np.array_equal(other["train"]["labels"], splits["train"]["labels"])
  assert not np.array_equal(splits["valid"]["labels"], splits["test"]["labels"])


def _parts(arrays, weights):
  """Recomputes the three label parts from the arrays with plain numpy."""
  mask = arrays["text_mask"].astype(bool)
  words = mask & (arrays["text_ids"] >= synthetic.FIRST_WORD_ID)
  text = (weights[arrays["text_ids"]] * words).sum(axis=1) / np.sqrt(words.sum(axis=1))
  audio = arrays["audio"][:, :, :2].mean(axis=2).sum(axis=1) / arrays["audio_lengths"]
  vision = arrays["vision"][:, :, :4].mean(axis=2).sum(axis=1) / arrays["vision_lengths"]
  return text, audio, vision


def test_labels_follow_formula(config, splits):
  weights = synthetic.word_weights(config.text_encoder.random_init.vocab_size, config.seed)
  text, audio, vision = _parts(splits["train"], weights)
  expected = np.clip(config.data.label_range / 3 * (text + audio + vision), -3, 3)
  residual = splits["train"]["labels"] - expected
  assert 0.07 < residual.std() < 0.13
  assert np.abs(residual).max() < 0.5
  for part in (text, audio, vision):
    assert 0.4 < part.std() < 0.9


def _features(arrays, vocab_size):
  """Per-modality inputs a linear model can use: bag of words, mean audio frame, mean vision frame."""
  counts = np.zeros((len(arrays["labels"]), vocab_size))
  for row, (ids, mask) in enumerate(zip(arrays["text_ids"], arrays["text_mask"])):
    np.add.at(counts[row], ids[mask == 1], 1.0)
  counts /= np.sqrt(np.maximum(counts[:, synthetic.FIRST_WORD_ID:].sum(axis=1, keepdims=True), 1))
  audio = arrays["audio"].sum(axis=1) / arrays["audio_lengths"][:, None]
  vision = arrays["vision"].sum(axis=1) / arrays["vision_lengths"][:, None]
  return {"text": counts, "audio": audio, "vision": vision}


def _r2(train_x, train_y, test_x, test_y):
  design = np.c_[train_x, np.ones(len(train_x))]
  coef, *_ = np.linalg.lstsq(design, train_y, rcond=None)
  predicted = np.c_[test_x, np.ones(len(test_x))] @ coef
  return 1 - ((test_y - predicted) ** 2).sum() / ((test_y - test_y.mean()) ** 2).sum()


def test_all_modalities_beat_any_single(config):
  big = synthetic.make_splits(_with(config, {"data.num_synthetic": 2048}))
  vocab = config.text_encoder.random_init.vocab_size
  train, test = _features(big["train"], vocab), _features(big["test"], vocab)
  y_train, y_test = big["train"]["labels"], big["test"]["labels"]
  single = {name: _r2(train[name], y_train, test[name], y_test) for name in train}
  joint = _r2(np.concatenate(list(train.values()), axis=1), y_train, np.concatenate(list(test.values()), axis=1), y_test)
  assert joint > 0.9
  for name, score in single.items():
    assert score < 0.6, name
    assert joint > score + 0.3, name


def test_load_splits_synthetic(config, splits):
  sources, info = data.load_splits(config)
  assert info.name == "synthetic"
  assert info.feature_dims == {"text": None, "audio": 5, "vision": 20}
  assert info.num_samples == {"train": 512, "valid": 128, "test": 128}
  assert info.max_lengths == {"text": 16, "audio": 16, "vision": 16}
  assert info.ids["valid"] == splits["valid"]["id"].tolist()
  sample = sources["valid"][5]
  assert sample["id"] == info.ids["valid"][5]
  np.testing.assert_array_equal(sample["audio"], splits["valid"]["audio"][5])
  assert len(sources["train"]) == 512


def test_too_few_samples(config):
  with pytest.raises(ValueError, match="num_synthetic must be at least 4"):
    synthetic.make_splits(_with(config, {"data.num_synthetic": 0}))
