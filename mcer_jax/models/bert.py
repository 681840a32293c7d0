"""BERT encoder in Flax linen and a loader for local Hugging Face BERT folders.

`BertEncoder` computes the same last hidden states as Hugging Face
`transformers.BertModel` (absolute position embeddings, post-LayerNorm
transformer layers). The pooler is not built: MCER uses the final-layer
[CLS] vector X_t directly. `load_pretrained` reads `config.json`,
`model.safetensors` and `vocab.txt` with the safetensors numpy API, so no
PyTorch is needed at run time. Any BERT size loads (MiniLM-L6-H384,
bert-base, bert-large).
"""

import dataclasses
import json
import logging
import os
import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file

Array = jax.Array
Params = dict[str, Any]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
VOCAB_FILE = "vocab.txt"

# hidden_act values of Hugging Face BERT configs and their JAX functions.
# "gelu" is the exact erf form; "gelu_new" and "gelu_pytorch_tanh" the tanh one.
_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Sizes and constants of a BERT encoder (Hugging Face names in comments)."""

  vocab_size: int
  hidden_size: int
  num_layers: int  # num_hidden_layers
  num_heads: int  # num_attention_heads
  intermediate_size: int
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_act: str = "gelu"
  hidden_dropout: float = 0.1  # hidden_dropout_prob
  attention_dropout: float = 0.1  # attention_probs_dropout_prob
  initializer_range: float = 0.02

  def __post_init__(self):
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads",
                 "intermediate_size", "max_position_embeddings",
                 "type_vocab_size"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(
            f"BertConfig.{name} must be a positive integer, got {value!r}.")
    if self.hidden_size % self.num_heads:
      raise ValueError(
          f"BertConfig.hidden_size ({self.hidden_size}) must be divisible by "
          f"num_heads ({self.num_heads}).")
    if self.hidden_act not in _ACTIVATIONS:
      raise ValueError(
          f"BertConfig.hidden_act {self.hidden_act!r} is not supported; "
          f"expected one of {sorted(_ACTIVATIONS)}.")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads


def config_from_random_init(random_init: Mapping[str, Any]) -> BertConfig:
  """Builds the config of a randomly initialised BERT.

  Args:
    random_init: `config.text_encoder.random_init` (vocab_size, hidden_size,
      num_layers, num_heads, intermediate_size).

  Returns:
    A BertConfig with BERT's defaults for everything else.
  """
  return BertConfig(
      vocab_size=int(random_init["vocab_size"]),
      hidden_size=int(random_init["hidden_size"]),
      num_layers=int(random_init["num_layers"]),
      num_heads=int(random_init["num_heads"]),
      intermediate_size=int(random_init["intermediate_size"]),
  )


def config_from_hf_dict(hf: Mapping[str, Any], source: str) -> BertConfig:
  """Converts a Hugging Face BERT `config.json` dict to a BertConfig.

  Args:
    hf: the parsed `config.json`.
    source: the file name, used in error messages.

  Raises:
    ValueError: the config is not a BERT config, lacks a size or requests a
      variant this module does not implement.
  """
  model_type = hf.get("model_type")
  if model_type != "bert":
    raise ValueError(
        f"{source}: model_type is {model_type!r}, expected 'bert'. Only "
        "BERT-architecture checkpoints load here; point "
        "config.text_encoder.checkpoint to a BERT folder.")
  architectures = hf.get("architectures") or []
  foreign = [a for a in architectures if not a.startswith("Bert")]
  if foreign:
    raise ValueError(
        f"{source}: architectures is {architectures}, expected BERT "
        "architectures (BertModel, BertForMaskedLM, ...).")
  position_type = hf.get("position_embedding_type", "absolute")
  if position_type != "absolute":
    raise ValueError(
        f"{source}: position_embedding_type is {position_type!r}; only "
        "'absolute' is implemented.")
  required = {
      "vocab_size": "vocab_size",
      "hidden_size": "hidden_size",
      "num_layers": "num_hidden_layers",
      "num_heads": "num_attention_heads",
      "intermediate_size": "intermediate_size",
  }
  missing = [key for key in required.values() if key not in hf]
  if missing:
    raise ValueError(f"{source}: missing fields {missing}.")
  values = {name: hf[key] for name, key in required.items()}
  return BertConfig(
      **values,
      max_position_embeddings=hf.get("max_position_embeddings", 512),
      type_vocab_size=hf.get("type_vocab_size", 2),
      layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
      hidden_act=hf.get("hidden_act", "gelu"),
      hidden_dropout=float(hf.get("hidden_dropout_prob", 0.1)),
      attention_dropout=float(hf.get("attention_probs_dropout_prob", 0.1)),
      initializer_range=float(hf.get("initializer_range", 0.02)),
  )


def _require_file(folder: str, name: str) -> str:
  path = os.path.join(folder, name)
  if not os.path.isfile(path):
    hint = ""
    if name == WEIGHTS_FILE and os.path.isfile(
        os.path.join(folder, "pytorch_model.bin")):
      hint = (" The folder has pytorch_model.bin: convert it with "
              f"`python tools/convert_checkpoint.py {folder}`.")
    raise FileNotFoundError(
        f"BERT checkpoint file not found: {path}. A checkpoint folder needs "
        f"{CONFIG_FILE}, {WEIGHTS_FILE} and {VOCAB_FILE}.{hint}")
  return path


def read_config(folder: str) -> BertConfig:
  """Reads the BertConfig of a Hugging Face folder without loading weights."""
  folder = os.path.expanduser(folder)
  if not os.path.isdir(folder):
    raise FileNotFoundError(
        f"BERT checkpoint folder not found: {folder}. Set "
        "config.text_encoder.checkpoint to a folder with "
        f"{CONFIG_FILE}, {WEIGHTS_FILE} and {VOCAB_FILE}.")
  path = _require_file(folder, CONFIG_FILE)
  try:
    with open(path, encoding="utf-8") as f:
      hf = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e}).") from e
  if not isinstance(hf, dict):
    raise ValueError(f"{path}: expected a JSON object, found {type(hf).__name__}.")
  return config_from_hf_dict(hf, path)


def _count_vocab(path: str) -> int:
  with open(path, encoding="utf-8") as f:
    return sum(1 for _ in f)


class BertEmbeddings(nn.Module):
  """Word + position + token-type embeddings, then LayerNorm and dropout."""

  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids: Array, token_type_ids: Array,
               train: bool) -> Array:
    """Embeds ids [B, L] into [B, L, H]."""
    cfg = self.config
    init = nn.initializers.normal(cfg.initializer_range)
    positions = jnp.arange(input_ids.shape[-1])[None, :]
    x = nn.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=init,
                 dtype=self.dtype, name="word_embeddings")(input_ids)
    x = x + nn.Embed(cfg.max_position_embeddings, cfg.hidden_size,
                     embedding_init=init, dtype=self.dtype,
                     name="position_embeddings")(positions)
    x = x + nn.Embed(cfg.type_vocab_size, cfg.hidden_size,
                     embedding_init=init, dtype=self.dtype,
                     name="token_type_embeddings")(token_type_ids)
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype,
                     name="layer_norm")(x)
    return nn.Dropout(cfg.hidden_dropout)(x, deterministic=not train)


class BertLayer(nn.Module):
  """One post-LayerNorm transformer layer: self-attention, then the FFN."""

  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, attention_mask: Array, train: bool) -> Array:
    """Maps x [B, L, H] with the mask [B, 1, L, L] to [B, L, H]."""
    cfg = self.config
    init = nn.initializers.normal(cfg.initializer_range)
    attention = nn.MultiHeadDotProductAttention(
        num_heads=cfg.num_heads,
        qkv_features=cfg.hidden_size,
        out_features=cfg.hidden_size,
        dropout_rate=cfg.attention_dropout,
        broadcast_dropout=False,
        kernel_init=init,
        dtype=self.dtype,
        force_fp32_for_softmax=jnp.dtype(self.dtype).itemsize < 4,
        name="attention")(x, x, mask=attention_mask, deterministic=not train)
    attention = nn.Dropout(cfg.hidden_dropout)(
        attention, deterministic=not train)
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype,
                     name="attention_layer_norm")(x + attention)
    h = nn.Dense(cfg.intermediate_size, kernel_init=init, dtype=self.dtype,
                 name="intermediate")(x)
    h = _ACTIVATIONS[cfg.hidden_act](h)
    h = nn.Dense(cfg.hidden_size, kernel_init=init, dtype=self.dtype,
                 name="output")(h)
    h = nn.Dropout(cfg.hidden_dropout)(h, deterministic=not train)
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype,
                        name="output_layer_norm")(x + h)


class BertEncoder(nn.Module):
  """BERT without pooler: token ids to the last hidden states.

  Attributes:
    config: the encoder's sizes.
    dtype: activation dtype (parameters stay float32).
  """

  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids: Array, attention_mask: Array,
               token_type_ids: Array | None = None, *,
               train: bool = False) -> Array:
    """Encodes a batch of token ids.

    Args:
      input_ids: int [B, L] WordPiece ids, [CLS] first.
      attention_mask: int or bool [B, L], 1 on real tokens. Padding keys get
        no attention, so the states of real tokens do not depend on padding.
      token_type_ids: int [B, L] segment ids; zeros when None.
      train: enables dropout (rng stream 'dropout').

    Returns:
      The last hidden states [B, L, H]; X_t is `[:, 0]`, the [CLS] state.
    """
    if input_ids.ndim != 2:
      raise ValueError(
          f"BertEncoder expects input_ids of shape [batch, length], got "
          f"{input_ids.shape}.")
    length = input_ids.shape[1]
    if length > self.config.max_position_embeddings:
      raise ValueError(
          f"Text length {length} exceeds max_position_embeddings "
          f"({self.config.max_position_embeddings}); cut the text shorter.")
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = BertEmbeddings(self.config, self.dtype, name="embeddings")(
        input_ids, token_type_ids, train)
    # Key padding mask only: padded query rows still attend to the real keys,
    # which keeps them finite and leaves real rows untouched.
    mask = nn.make_attention_mask(jnp.ones_like(attention_mask),
                                  attention_mask > 0)
    for i in range(self.config.num_layers):
      x = BertLayer(self.config, self.dtype, name=f"layer_{i}")(x, mask, train)
    return x


# Hugging Face tensor names (after dropping a leading "bert.") to Flax paths.
_EMBEDDING_NAMES = {
    "embeddings.word_embeddings.weight": ("embeddings", "word_embeddings", "embedding"),
    "embeddings.position_embeddings.weight": ("embeddings", "position_embeddings", "embedding"),
    "embeddings.token_type_embeddings.weight": ("embeddings", "token_type_embeddings", "embedding"),
    "embeddings.LayerNorm.weight": ("embeddings", "layer_norm", "scale"),
    "embeddings.LayerNorm.bias": ("embeddings", "layer_norm", "bias"),
}
_LAYER_NAMES = {
    "attention.self.query.weight": ("attention", "query", "kernel"),
    "attention.self.query.bias": ("attention", "query", "bias"),
    "attention.self.key.weight": ("attention", "key", "kernel"),
    "attention.self.key.bias": ("attention", "key", "bias"),
    "attention.self.value.weight": ("attention", "value", "kernel"),
    "attention.self.value.bias": ("attention", "value", "bias"),
    "attention.output.dense.weight": ("attention", "out", "kernel"),
    "attention.output.dense.bias": ("attention", "out", "bias"),
    "attention.output.LayerNorm.weight": ("attention_layer_norm", "scale"),
    "attention.output.LayerNorm.bias": ("attention_layer_norm", "bias"),
    "intermediate.dense.weight": ("intermediate", "kernel"),
    "intermediate.dense.bias": ("intermediate", "bias"),
    "output.dense.weight": ("output", "kernel"),
    "output.dense.bias": ("output", "bias"),
    "output.LayerNorm.weight": ("output_layer_norm", "scale"),
    "output.LayerNorm.bias": ("output_layer_norm", "bias"),
}
# Tensors a BERT checkpoint may carry that the encoder does not use.
_UNUSED = re.compile(
    r"^(pooler\.|cls\.|embeddings\.position_ids$|qa_outputs\.|classifier\.)")


def _expected_tensors(cfg: BertConfig) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
  """Maps each Hugging Face tensor name to (Flax path, PyTorch shape)."""
  h, i = cfg.hidden_size, cfg.intermediate_size
  shapes = {
      "embeddings.word_embeddings.weight": (cfg.vocab_size, h),
      "embeddings.position_embeddings.weight": (cfg.max_position_embeddings, h),
      "embeddings.token_type_embeddings.weight": (cfg.type_vocab_size, h),
      "embeddings.LayerNorm.weight": (h,),
      "embeddings.LayerNorm.bias": (h,),
  }
  expected = {name: (path, shapes[name]) for name, path in _EMBEDDING_NAMES.items()}
  layer_shapes = {
      "attention.self.query.weight": (h, h),
      "attention.self.key.weight": (h, h),
      "attention.self.value.weight": (h, h),
      "attention.output.dense.weight": (h, h),
      "intermediate.dense.weight": (i, h),
      "intermediate.dense.bias": (i,),
      "output.dense.weight": (h, i),
  }
  for layer in range(cfg.num_layers):
    for suffix, path in _LAYER_NAMES.items():
      shape = layer_shapes.get(suffix, (h,))
      expected[f"encoder.layer.{layer}.{suffix}"] = ((f"layer_{layer}",) + path, shape)
  return expected


def _to_flax(name: str, tensor: np.ndarray, cfg: BertConfig) -> np.ndarray:
  """Converts one PyTorch tensor to the layout of its Flax parameter."""
  tensor = np.asarray(tensor, dtype=np.float32)
  heads, head_dim, h = cfg.num_heads, cfg.head_dim, cfg.hidden_size
  if name.endswith(("query.weight", "key.weight", "value.weight")):
    return tensor.T.reshape(h, heads, head_dim)  # DenseGeneral [in, heads, head_dim]
  if name.endswith(("query.bias", "key.bias", "value.bias")):
    return tensor.reshape(heads, head_dim)
  if name.endswith("attention.output.dense.weight"):
    return tensor.T.reshape(heads, head_dim, h)  # DenseGeneral [heads, head_dim, out]
  if name.endswith("dense.weight"):
    return tensor.T  # torch Linear [out, in] to Dense [in, out]
  return tensor


def _normalise_names(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Strips a "bert." prefix and maps old LayerNorm gamma/beta names."""
  out = {}
  for name, tensor in tensors.items():
    if name.startswith("bert."):
      name = name[len("bert."):]
    name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
    name = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)
    out[name] = tensor
  return out


def params_from_tensors(tensors: Mapping[str, np.ndarray], cfg: BertConfig,
                        source: str) -> Params:
  """Builds BertEncoder parameters from Hugging Face tensors.

  Args:
    tensors: name to array, as in a Hugging Face BERT state dict.
    cfg: the config the tensors must match.
    source: the file name, used in error messages.

  Returns:
    The `params` collection of BertEncoder (float32 numpy arrays).

  Raises:
    ValueError: a tensor is missing, has the wrong shape, or is unknown.
  """
  tensors = _normalise_names(tensors)
  expected = _expected_tensors(cfg)
  missing = sorted(set(expected) - set(tensors))
  if missing:
    listed = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
    raise ValueError(
        f"{source}: {len(missing)} BERT tensors are missing ({listed}). The "
        "weights do not belong to the config.json next to them, or are not "
        "a BertModel checkpoint.")
  unknown = sorted(n for n in set(tensors) - set(expected) if not _UNUSED.match(n))
  if unknown:
    listed = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
    raise ValueError(
        f"{source}: {len(unknown)} tensors are not part of a BERT encoder "
        f"({listed}). Check that config.json's num_hidden_layers matches the "
        "weights.")
  params: Params = {}
  for name, (path, shape) in expected.items():
    tensor = tensors[name]
    if tuple(tensor.shape) != shape:
      raise ValueError(
          f"{source}: tensor {name} has shape {tuple(tensor.shape)}, expected "
          f"{shape} from config.json.")
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = _to_flax(name, tensor, cfg)
  return params


def load_pretrained(folder: str) -> tuple[BertConfig, Params]:
  """Loads a local Hugging Face BERT folder without PyTorch.

  Args:
    folder: a folder with `config.json`, `model.safetensors` and `vocab.txt`
      (convert a `pytorch_model.bin` with tools/convert_checkpoint.py).

  Returns:
    (config, params): params is the `params` collection of `BertEncoder`.

  Raises:
    FileNotFoundError: the folder or one of its three files is missing.
    ValueError: config.json is not a BERT config, or the weights do not match
      it (the message names the tensor).
  """
  folder = os.path.expanduser(folder)
  cfg = read_config(folder)
  vocab_path = _require_file(folder, VOCAB_FILE)
  vocab_lines = _count_vocab(vocab_path)
  if vocab_lines > cfg.vocab_size:
    raise ValueError(
        f"{vocab_path} has {vocab_lines} tokens but config.json's vocab_size "
        f"is {cfg.vocab_size}; the vocabulary belongs to another model.")
  weights_path = _require_file(folder, WEIGHTS_FILE)
  try:
    tensors = load_file(weights_path)
  except Exception as e:  # safetensors raises its own SafetensorError type.
    raise ValueError(f"{weights_path}: cannot read safetensors file ({e}).") from e
  params = params_from_tensors(tensors, cfg, weights_path)
  logging.info("Loaded BERT (%d layers, hidden %d) from %s.", cfg.num_layers,
               cfg.hidden_size, folder)
  return cfg, params
