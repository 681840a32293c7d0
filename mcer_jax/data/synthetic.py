"""Deterministic synthetic splits whose labels need all three modalities.

Each sample has a sentiment made of three parts, one per modality, so a model
that reads text, audio and vision can explain the label and one that reads a
single modality explains about a third of it:
  * text: the sum of its words' sentiment weights (each in [-1, 1], one fixed
    weight per word id) divided by the square root of the word count, so the
    part's spread does not shrink with longer transcripts;
  * audio: the mean over valid frames of the mean of audio dims 0 and 1;
  * vision: the mean over valid frames of the mean of vision dims 0 to 3.
label = clip(s * (text part + audio part + vision part) + N(0, 0.1^2), -r, r)
with r the label range and s = r / 3. Each part has a standard deviation of
about 0.6.
The parts are computed from the stored arrays, so the label is an exact
function of the inputs plus the noise.
"""

import numpy as np

from mcer_jax.data.normalize import SPLITS

AUDIO_DIM = 5
VISION_DIM = 20
AUDIO_SIGNAL_DIMS = 2
VISION_SIGNAL_DIMS = 4
NOISE_STD = 0.1
# Ids 0-3 are [PAD], [CLS], [SEP] and [UNK]; words use the remaining ids.
PAD_ID, CLS_ID, SEP_ID = 0, 1, 2
FIRST_WORD_ID = 4


def word_weights(vocab_size: int, seed: int) -> np.ndarray:
  """Returns float32 [vocab_size] sentiment weights, 0 for the special ids."""
  rng = np.random.default_rng([seed, 0])
  weights = rng.uniform(-1.0, 1.0, vocab_size).astype(np.float32)
  weights[:FIRST_WORD_ID] = 0.0
  return weights


def _modality(rng: np.random.Generator, num: int, max_len: int, dim: int, signal_dims: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Returns (frames [num, max_len, dim], lengths [num], part [num]) of one non-text modality."""
  lengths = rng.integers(max(1, max_len // 4), max_len + 1, num)
  level = rng.uniform(-1.0, 1.0, num)
  frames = rng.normal(0.0, 0.5, (num, max_len, dim))
  frames[:, :, :signal_dims] += level[:, None, None]
  valid = np.arange(max_len)[None, :] < lengths[:, None]
  frames = np.where(valid[:, :, None], frames, 0.0).astype(np.float32)
  part = frames[:, :, :signal_dims].mean(axis=2).sum(axis=1) / lengths
  return frames, lengths.astype(np.int32), part


def make_split(
    num: int,
    *,
    vocab_size: int,
    max_text_len: int,
    max_audio_len: int,
    max_vision_len: int,
    label_range: float,
    seed: int,
    split_index: int,
    name: str,
) -> dict[str, np.ndarray]:
  """Returns one split's arrays (docs/interfaces.md) of `num` synthetic samples."""
  if vocab_size <= FIRST_WORD_ID:
    raise ValueError(f"vocab_size must exceed {FIRST_WORD_ID} (the special ids), found {vocab_size}")
  if max_text_len < 3:
    raise ValueError(f"max_text_len must be at least 3 ([CLS], one word, [SEP]), found {max_text_len}")
  weights = word_weights(vocab_size, seed)
  rng = np.random.default_rng([seed, 1, split_index])

  num_words = rng.integers(1, max_text_len - 1, num)
  text_ids = np.zeros([num, max_text_len], np.int32)
  text_part = np.zeros(num)
  raw_text = []
  for i, count in enumerate(num_words):
    words = rng.integers(FIRST_WORD_ID, vocab_size, count)
    text_ids[i, 0] = CLS_ID
    text_ids[i, 1 : count + 1] = words
    text_ids[i, count + 1] = SEP_ID
    text_part[i] = weights[words].sum() / np.sqrt(count)
    raw_text.append(" ".join(f"w{word}" for word in words))
  text_mask = (text_ids != PAD_ID).astype(np.int32)

  audio, audio_lengths, audio_part = _modality(rng, num, max_audio_len, AUDIO_DIM, AUDIO_SIGNAL_DIMS)
  vision, vision_lengths, vision_part = _modality(rng, num, max_vision_len, VISION_DIM, VISION_SIGNAL_DIMS)
  noise = rng.normal(0.0, NOISE_STD, num)
  scale = label_range / 3.0
  labels = np.clip(scale * (text_part + audio_part + vision_part) + noise, -label_range, label_range).astype(np.float32)
  return {
      "id": np.asarray([f"synthetic_{name}_{i:05d}" for i in range(num)]),
      "raw_text": np.asarray(raw_text),
      "text_ids": text_ids,
      "text_mask": text_mask,
      "text_segment": np.zeros_like(text_ids),
      "audio": audio,
      "audio_lengths": audio_lengths,
      "vision": vision,
      "vision_lengths": vision_lengths,
      "labels": labels,
  }


def make_splits(config) -> dict[str, dict[str, np.ndarray]]:
  """Returns train/valid/test arrays: config.data.num_synthetic training samples, a quarter of that for the others."""
  num_train = int(config.data.num_synthetic)
  if num_train < 4:
    raise ValueError(f"config.data.num_synthetic must be at least 4 for synthetic data, found {num_train}")
  sizes = {"train": num_train, "valid": num_train // 4, "test": num_train // 4}
  return {
      split: make_split(
          sizes[split],
          vocab_size=int(config.text_encoder.random_init.vocab_size),
          max_text_len=int(config.data.max_text_len),
          max_audio_len=int(config.data.max_audio_len),
          max_vision_len=int(config.data.max_vision_len),
          label_range=float(config.data.label_range),
          seed=int(config.seed),
          split_index=index,
          name=split,
      )
      for index, split in enumerate(SPLITS)
  }
