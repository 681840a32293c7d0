"""TFDS builders `mosi`, `mosei` and `sims` that prepare the user's released files.

The builders read a manual folder (MMSA, MISA or csd layout, see
`mcer_jax.data.readers`) and write array_record files, which
`tfds.data_source` reads with random access. Neither step imports TensorFlow.

A prepared dataset lives in `<data_dir>/<name>/<config name>/<version>`. The
config name is the layout, the MMSA file stem and a digest of everything that
shapes the arrays. The digest covers the layout, the source files' names and
sizes, the maximum lengths, the label range, strict_features and the csd
splits file. For the layouts tokenised here (misa, csd) it also covers the
vocabulary's bytes. A changed setting therefore prepares a new dataset instead
of reusing a stale one.

Each example stores the valid audio and vision frames only (`[length, d]`);
`mcer_jax.data.sources.TfdsSource` pads them back. The ids, transcripts and
text lengths of every split are also kept in the dataset's metadata.json.
"""

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from mcer_jax.data import csd
from mcer_jax.data import readers
from mcer_jax.data import tokenization
from mcer_jax.data.errors import DataError
from mcer_jax.data.normalize import UNIMODAL_LABEL_KEYS, ReadOptions
from mcer_jax.data.sources import STRING_KEYS, TfdsSource

BUILDER_VERSION = "1.0.0"
# Increase when a reader change alters the prepared arrays, so old data is not reused.
READER_REVISION = 1


@dataclasses.dataclass(eq=False)
class ReleaseConfig(tfds.core.BuilderConfig):
  """A builder config: the reader settings of one prepared dataset."""

  layout: str = "auto"
  mmsa_file: str = ""
  options: ReadOptions = ReadOptions()


def _file_digest(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as stream:
    for chunk in iter(lambda: stream.read(1 << 24), b""):
      digest.update(chunk)
  return digest.hexdigest()


def release_config(manual_dir: str, *, options: ReadOptions, layout: str = "auto", mmsa_file: str = "") -> ReleaseConfig:
  """Resolves the layout of `manual_dir` and returns the builder config, named by a digest of its settings."""
  resolved = readers.resolve_layout(manual_dir, layout, mmsa_file)
  settings: dict[str, Any] = {
      "reader_revision": READER_REVISION,
      "layout": resolved.name,
      # Contents, not sizes: a folder of other samples in files of the same
      # names and sizes must not reuse the data prepared from the first one.
      "files": [(os.path.basename(path), _file_digest(path)) for path in resolved.files],
      "max_lengths": [options.max_text_len, options.max_audio_len, options.max_vision_len],
      "label_range": options.label_range,
      "strict_features": options.strict_features,
  }
  if resolved.name in ("misa", "csd"):
    encoder = tokenization.WordPieceEncoder(options.vocab_file)
    settings["vocab"] = tokenization.vocab_fingerprint(encoder.vocab_file, encoder.lowercase)
  if resolved.name == "csd":
    splits_path = os.path.join(manual_dir, csd.SPLITS_FILE)
    settings["splits"] = _file_digest(splits_path) if os.path.exists(splits_path) else f"mmsdk:{options.dataset}"
  digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
  prefix = resolved.name
  if resolved.name == "mmsa":
    prefix += "_" + os.path.splitext(os.path.basename(resolved.files[0]))[0]
  name = re.sub(r"[^a-z0-9_]+", "_", f"{prefix}_{digest}".lower())
  description = f"{resolved.name} layout from {manual_dir}; settings {json.dumps(settings, sort_keys=True)}"
  return ReleaseConfig(name=name, description=description, layout=resolved.name, mmsa_file=mmsa_file, options=options)


def _features(arrays: dict[str, np.ndarray]) -> tfds.features.FeaturesDict:
  """Returns the feature spec of one split's arrays; frames are stored at their valid length."""
  spec: dict[str, Any] = {
      "id": tfds.features.Text(),
      "raw_text": tfds.features.Text(),
      "labels": tfds.features.Scalar(dtype=np.float32),
  }
  max_text_len = arrays["text_mask"].shape[1]
  spec["text_mask"] = tfds.features.Tensor(shape=(max_text_len,), dtype=np.int32)
  if "text_features" in arrays:
    spec["text_features"] = tfds.features.Tensor(shape=(max_text_len, arrays["text_features"].shape[2]), dtype=np.float32)
  else:
    for key in ("text_ids", "text_segment"):
      spec[key] = tfds.features.Tensor(shape=(max_text_len,), dtype=np.int32)
  for modality in ("audio", "vision"):
    spec[modality] = tfds.features.Tensor(shape=(None, arrays[modality].shape[2]), dtype=np.float32)
    spec[f"{modality}_lengths"] = tfds.features.Scalar(dtype=np.int32)
  for key in UNIMODAL_LABEL_KEYS:
    if key in arrays:
      spec[key] = tfds.features.Scalar(dtype=np.float32)
  return tfds.features.FeaturesDict(spec)


class _SentimentBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Prepares a multimodal sentiment release from a manual folder with the project's readers."""

  VERSION = tfds.core.Version(BUILDER_VERSION)
  RELEASE_NOTES = {BUILDER_VERSION: "Split arrays of docs/interfaces.md with valid-length audio and vision."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put the release's files in the manual folder: MMSA's aligned_50.pkl or unaligned_50.pkl, "
      "MISA's train.pkl, dev.pkl and test.pkl, or CMU-MultimodalSDK .csd files with splits.json."
  )

  def __init__(self, *, config: ReleaseConfig, manual_dir: str, **kwargs):
    self._manual_dir = os.fspath(manual_dir)
    self._arrays: dict[str, dict[str, np.ndarray]] | None = None
    super().__init__(config=config, **kwargs)

  def _read(self) -> dict[str, dict[str, np.ndarray]]:
    if self._arrays is None:
      config: ReleaseConfig = self.builder_config
      self._arrays = readers.read_manual_dir(
          self._manual_dir, config.layout, options=config.options, mmsa_file=config.mmsa_file
      )
    return self._arrays

  def _info(self) -> tfds.core.DatasetInfo:
    arrays = self._read()
    config: ReleaseConfig = self.builder_config
    metadata = tfds.core.MetadataDict(
        layout=config.layout,
        manual_dir=self._manual_dir,
        label_range=config.options.label_range,
        max_lengths={
            "text": config.options.max_text_len,
            "audio": config.options.max_audio_len,
            "vision": config.options.max_vision_len,
        },
        ids={split: values["id"].tolist() for split, values in arrays.items()},
        raw_texts={split: values["raw_text"].tolist() for split, values in arrays.items()},
        text_lengths={split: values["text_mask"].sum(axis=1).tolist() for split, values in arrays.items()},
    )
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"{self.name}: multimodal sentiment samples read from the user's files. {config.description}",
        features=_features(arrays["train"]),
        disable_shuffling=True,
        metadata=metadata,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator[tuple[int, dict[str, Any]]]]:
    del dl_manager  # The files were read from the manual folder by `_info`.
    return {split: self._generate_examples(split) for split in self._read()}

  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
    arrays = self._read()[split]
    for index in range(len(arrays["id"])):
      example = {key: values[index] for key, values in arrays.items()}
      for modality in ("audio", "vision"):
        example[modality] = example[modality][: example[f"{modality}_lengths"]]
      yield index, example


class Mosi(_SentimentBuilder):
  """CMU-MOSI from the user's files."""


class Mosei(_SentimentBuilder):
  """CMU-MOSEI from the user's files."""


class Sims(_SentimentBuilder):
  """CH-SIMS from the user's files."""


BUILDERS = {"mosi": Mosi, "mosei": Mosei, "sims": Sims}


@contextlib.contextmanager
def _file_lock(path: str):
  """Holds an exclusive lock on `path` so concurrent processes on one host prepare a dataset once."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "a") as stream:
    fcntl.flock(stream, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(stream, fcntl.LOCK_UN)


def builder_class(dataset: str) -> type[_SentimentBuilder]:
  """Returns the builder class of `dataset` (mosi, mosei or sims)."""
  if dataset not in BUILDERS:
    raise DataError(f"no TFDS builder for dataset '{dataset}'; expected one of {sorted(BUILDERS)} (or 'synthetic')")
  return BUILDERS[dataset]


def prepare(dataset: str, manual_dir: str, data_dir: str, *, options: ReadOptions, layout: str = "auto", mmsa_file: str = "") -> str:
  """Prepares the dataset in `data_dir` unless an identical one exists there; returns its directory."""
  cls = builder_class(dataset)
  config = release_config(manual_dir, options=options, layout=layout, mmsa_file=mmsa_file)
  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  path = os.path.join(data_dir, cls.name, config.name, BUILDER_VERSION)
  info_file = os.path.join(path, "dataset_info.json")
  if os.path.exists(info_file):
    logging.info("Reusing the prepared %s data in %s.", dataset, path)
    return path
  with _file_lock(os.path.join(data_dir, cls.name, f".{config.name}.lock")):
    if os.path.exists(info_file):
      logging.info("Reusing the prepared %s data in %s (prepared by another process).", dataset, path)
      return path
    logging.info("Preparing %s from %s into %s.", dataset, manual_dir, path)
    builder = cls(config=config, manual_dir=manual_dir, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return path


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A prepared dataset opened for random access."""

  sources: dict[str, TfdsSource]
  features: Any  # tfds.features.FeaturesDict
  metadata: dict[str, Any]


def open_prepared(path: str) -> Prepared:
  """Opens the prepared dataset at `path` with `tfds.data_source` (array_record, random access)."""
  builder = tfds.builder_from_directory(path)
  metadata = dict(builder.info.metadata or {})
  for key in ("max_lengths", "text_lengths", "ids", "raw_texts"):
    if key not in metadata:
      raise DataError(f"{path}: metadata.json lacks '{key}'; delete the folder and prepare the data again")
  features = builder.info.features
  # Scalars decode as Python numbers; the stored dtypes restore int32 and float32.
  dtypes = {key: np.dtype(feature.np_dtype) for key, feature in features.items() if key not in STRING_KEYS}
  sources = {
      split: TfdsSource(data_source, metadata["max_lengths"], metadata["text_lengths"][split], dtypes)
      for split, data_source in builder.as_data_source().items()
  }
  return Prepared(sources=sources, features=features, metadata=metadata)
