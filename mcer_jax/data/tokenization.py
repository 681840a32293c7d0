"""BERT WordPiece tokenisation of transcripts for layouts that store words."""

import hashlib
import json
import os

import numpy as np
from tokenizers import BertWordPieceTokenizer

from mcer_jax.data.errors import DataError


def read_lowercase_setting(vocab_file: str) -> bool:
  """Returns `do_lower_case` from the tokenizer_config.json beside `vocab_file` (True when absent)."""
  config_path = os.path.join(os.path.dirname(vocab_file), "tokenizer_config.json")
  if not os.path.exists(config_path):
    return True
  with open(config_path, encoding="utf-8") as stream:
    try:
      settings = json.load(stream)
    except json.JSONDecodeError as error:
      raise DataError(f"{config_path}: invalid JSON ({error}); fix or delete the file.") from error
  return bool(settings.get("do_lower_case", True))


def vocab_fingerprint(vocab_file: str, lowercase: bool) -> str:
  """Returns a sha256 hex digest of the vocabulary's bytes and the lowercase setting."""
  digest = hashlib.sha256()
  with open(vocab_file, "rb") as stream:
    digest.update(stream.read())
  digest.update(b"lowercase" if lowercase else b"cased")
  return digest.hexdigest()


class WordPieceEncoder:
  """Encodes transcripts as [CLS] ... [SEP] WordPiece ids, zero padded to a fixed length."""

  def __init__(self, vocab_file: str, lowercase: bool | None = None):
    if not vocab_file or not os.path.isfile(vocab_file):
      raise DataError(
          f"WordPiece vocabulary '{vocab_file}' not found. Layouts that store words (misa, csd) "
          "are tokenised with the text encoder's vocab.txt: set config.text_encoder.checkpoint "
          "to a folder that contains vocab.txt."
      )
    self.vocab_file = vocab_file
    self.lowercase = read_lowercase_setting(vocab_file) if lowercase is None else lowercase
    self._tokenizer = BertWordPieceTokenizer(vocab_file, lowercase=self.lowercase)
    self.vocab_size = self._tokenizer.get_vocab_size()
    pad_id = self._tokenizer.token_to_id("[PAD]")
    if pad_id is None:
      raise DataError(f"{vocab_file}: the vocabulary has no [PAD] token; expected a BERT vocab.txt.")
    self.pad_id = pad_id

  def encode(self, texts: list[str], max_len: int) -> tuple[dict[str, np.ndarray], int]:
    """Tokenises `texts`, truncating each to `max_len` tokens including [CLS] and [SEP].

    Returns:
      (arrays, num_truncated): `text_ids`, `text_mask`, `text_segment`, each
      int32 [len(texts), max_len], and how many texts lost tokens to truncation.
    """
    self._tokenizer.enable_truncation(max_length=max_len)
    self._tokenizer.enable_padding(length=max_len, pad_id=self.pad_id, pad_token="[PAD]")
    encodings = self._tokenizer.encode_batch(texts)
    arrays = {
        "text_ids": np.asarray([e.ids for e in encodings], np.int32).reshape(len(texts), max_len),
        "text_mask": np.asarray([e.attention_mask for e in encodings], np.int32).reshape(len(texts), max_len),
        "text_segment": np.asarray([e.type_ids for e in encodings], np.int32).reshape(len(texts), max_len),
    }
    num_truncated = sum(1 for e in encodings if e.overflowing)
    return arrays, num_truncated
