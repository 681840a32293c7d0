"""Data: readers of released files, TFDS builders, synthetic data and the input pipeline.

`load_splits(config)` is the entry point: it returns random-access sources of
per-sample dicts (docs/interfaces.md) for train/valid/test and a `DataInfo`
with the feature sizes and the ids needed for predictions.
"""

import dataclasses
import os
from typing import Any

import ml_collections
from absl import logging

from mcer_jax.data.errors import DataError
from mcer_jax.data.normalize import SPLITS, UNIMODAL_LABEL_KEYS, ReadOptions
from mcer_jax.data.sources import ArraySource

__all__ = ["DataError", "DataInfo", "ReadOptions", "load_splits", "read_options"]


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """Facts about the loaded data that the model and the run outputs need."""

  name: str  # mosi | mosei | sims | synthetic
  text_feature_dim: int | None  # d_t of precomputed text features; None when the text is token ids.
  audio_dim: int
  vision_dim: int
  max_lengths: dict[str, int]  # text, audio, vision
  label_range: float
  num_samples: dict[str, int]  # per split
  has_unimodal_labels: bool  # CH-SIMS's labels_t, labels_a, labels_v are present.
  ids: dict[str, list[str]]  # per split, in row order
  raw_texts: dict[str, list[str]]  # per split, in row order

  @property
  def feature_dims(self) -> dict[str, int | None]:
    """Feature sizes by modality: `text` (None for token ids), `audio`, `vision`."""
    return {"text": self.text_feature_dim, "audio": self.audio_dim, "vision": self.vision_dim}


def read_options(config: ml_collections.ConfigDict) -> ReadOptions:
  """Returns the reader settings of `config`; the vocabulary is the text encoder checkpoint's vocab.txt."""
  checkpoint = config.text_encoder.checkpoint
  return ReadOptions(
      max_text_len=int(config.data.max_text_len),
      max_audio_len=int(config.data.max_audio_len),
      max_vision_len=int(config.data.max_vision_len),
      label_range=float(config.data.label_range),
      strict_features=bool(config.data.strict_features),
      vocab_file=os.path.join(os.path.expanduser(checkpoint), "vocab.txt") if checkpoint else "",
      dataset=config.data.name,
  )


def _synthetic(config: ml_collections.ConfigDict) -> tuple[dict[str, ArraySource], DataInfo]:
  from mcer_jax.data import synthetic

  arrays = synthetic.make_splits(config)
  info = DataInfo(
      name="synthetic",
      text_feature_dim=None,
      audio_dim=synthetic.AUDIO_DIM,
      vision_dim=synthetic.VISION_DIM,
      max_lengths={
          "text": int(config.data.max_text_len),
          "audio": int(config.data.max_audio_len),
          "vision": int(config.data.max_vision_len),
      },
      label_range=float(config.data.label_range),
      num_samples={split: len(values["id"]) for split, values in arrays.items()},
      has_unimodal_labels=False,
      ids={split: values["id"].tolist() for split, values in arrays.items()},
      raw_texts={split: values["raw_text"].tolist() for split, values in arrays.items()},
  )
  logging.info("Generated synthetic data: %s samples.", info.num_samples)
  return {split: ArraySource(values) for split, values in arrays.items()}, info


def load_splits(config: ml_collections.ConfigDict) -> tuple[dict[str, Any], DataInfo]:
  """Returns ({split: random-access source}, DataInfo) for `config.data`.

  Synthetic data is generated in memory. Otherwise the release in
  `config.data.manual_dir` is prepared as a TFDS dataset in
  `config.data.data_dir` on first use and read back with `tfds.data_source`.
  Later calls reuse the prepared data, and the log records which happened.
  """
  if config.data.name == "synthetic":
    if config.data.manual_dir:
      logging.warning(
          "config.data.manual_dir=%r is ignored: config.data.name is 'synthetic', so the data "
          "is generated. Use experiments/mosi.py (or set config.data.name) to read the files.",
          config.data.manual_dir)
    return _synthetic(config)
  if not config.data.manual_dir:
    raise DataError(
        f"config.data.manual_dir is empty; set it to the folder with the {config.data.name} release "
        "(MMSA, MISA or csd files), or use config.data.name='synthetic'"
    )
  from mcer_jax.data import tfds_builders  # Imports TFDS only for real data.

  options = read_options(config)
  path = tfds_builders.prepare(
      config.data.name,
      os.path.expanduser(config.data.manual_dir),
      config.data.data_dir,
      options=options,
      layout=config.data.layout,
      mmsa_file=config.data.mmsa_file,
  )
  prepared = tfds_builders.open_prepared(path)
  features = prepared.features
  missing = [split for split in SPLITS if split not in prepared.sources]
  if missing:
    raise DataError(f"{path}: missing split(s) {missing}; delete the folder and prepare the data again")
  text_feature_dim = features["text_features"].shape[-1] if "text_features" in features else None
  info = DataInfo(
      name=config.data.name,
      text_feature_dim=text_feature_dim,
      audio_dim=int(features["audio"].shape[-1]),
      vision_dim=int(features["vision"].shape[-1]),
      max_lengths={key: int(value) for key, value in prepared.metadata["max_lengths"].items()},
      label_range=float(prepared.metadata["label_range"]),
      num_samples={split: len(source) for split, source in prepared.sources.items()},
      has_unimodal_labels=all(key in features for key in UNIMODAL_LABEL_KEYS),
      ids={split: list(values) for split, values in prepared.metadata["ids"].items()},
      raw_texts={split: list(values) for split, values in prepared.metadata["raw_texts"].items()},
  )
  logging.info("Loaded %s from %s: %s samples, feature sizes %s.", config.data.name, path, info.num_samples, info.feature_dims)
  return prepared.sources, info
