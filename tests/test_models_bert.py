"""Tests of the Flax BERT encoder and the Hugging Face checkpoint loader."""

import importlib.util
import json
import os
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from mcer_jax.models import bert

GOLDEN = pathlib.Path(
    os.environ.get("MCER_BERT_GOLDEN", pathlib.Path(__file__).parent / "golden" / "bert_minilm.npz"))
HAS_TORCH = (importlib.util.find_spec("torch") is not None
             and importlib.util.find_spec("transformers") is not None)


@pytest.fixture(scope="module")
def minilm_params(minilm):
  return bert.load_pretrained(str(minilm))


def _encode(cfg, params, ids, mask, segments=None):
  encoder = bert.BertEncoder(cfg)
  apply = jax.jit(lambda p, i, m, s: encoder.apply({"params": p}, i, m, s, train=False))
  if segments is None:
    segments = np.zeros_like(ids)
  return np.asarray(apply(params, ids, mask, segments))


def _hf_reference(folder, ids, mask, segments):
  import torch
  import transformers

  model = transformers.BertModel.from_pretrained(str(folder), add_pooling_layer=False).eval()
  with torch.no_grad():
    return model(input_ids=torch.from_numpy(ids).long(),
                 attention_mask=torch.from_numpy(mask).long(),
                 token_type_ids=torch.from_numpy(segments).long()).last_hidden_state.numpy()


def test_minilm_matches_pytorch_golden(minilm, minilm_params):
  golden = np.load(GOLDEN)
  ids = golden["input_ids"]
  mask = golden["attention_mask"]
  segments = golden["token_type_ids"]
  cfg, params = minilm_params
  if HAS_TORCH:
    reference = _hf_reference(minilm, ids, mask, segments)
  else:
    reference = golden["last_hidden_state"]
  hidden = _encode(cfg, params, ids, mask, segments)
  chex.assert_shape(hidden, (ids.shape[0], ids.shape[1], 384))
  valid = mask.astype(bool)
  error = np.abs(hidden - reference)[valid]
  assert error.max() < 1e-4, f"max abs error {error.max():.2e} on real tokens"
  # The [CLS] vector X_t on its own, the value MCER uses.
  np.testing.assert_allclose(hidden[:, 0], reference[:, 0], atol=1e-4, rtol=0)


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch reference needs torch and transformers")
def test_minilm_matches_pytorch_on_mosi_transcripts(minilm, minilm_params, mosi_real):
  from mcer_jax.data import safe_pickle
  from tokenizers import BertWordPieceTokenizer

  data = safe_pickle.load(mosi_real / "mmsa" / "unaligned_50.pkl")
  sentences = [str(s) for s in data["valid"]["raw_text"][:32]]
  tokenizer = BertWordPieceTokenizer(str(minilm / "vocab.txt"), lowercase=True)
  encodings = tokenizer.encode_batch(sentences)
  length = max(len(e.ids) for e in encodings)
  ids = np.zeros((len(sentences), length), np.int32)
  mask = np.zeros_like(ids)
  for row, encoding in enumerate(encodings):
    ids[row, :len(encoding.ids)] = encoding.ids
    mask[row, :len(encoding.ids)] = 1
  cfg, params = minilm_params
  hidden = _encode(cfg, params, ids, mask)
  reference = _hf_reference(minilm, ids, mask, np.zeros_like(ids))
  assert np.abs(hidden - reference)[mask.astype(bool)].max() < 1e-4


def test_encoder_padding_invariant(minilm_params):
  cfg, params = minilm_params
  golden = np.load(GOLDEN)
  ids, mask = golden["input_ids"], golden["attention_mask"]
  lengths = mask.sum(1)
  row = int(np.argmin(lengths))
  n = int(lengths[row])
  assert n < ids.shape[1], "the golden sentences must differ in length"
  alone = _encode(cfg, params, ids[row:row + 1, :n], mask[row:row + 1, :n])
  # Extra padding with nonzero ids must not matter either: the mask alone decides.
  padded_ids = np.concatenate([ids, np.full((ids.shape[0], 7), 1037, np.int32)], axis=1)
  padded_mask = np.concatenate([mask, np.zeros((ids.shape[0], 7), np.int32)], axis=1)
  batched = _encode(cfg, params, padded_ids, padded_mask)
  np.testing.assert_allclose(batched[row, :n], alone[0], atol=2e-5, rtol=0)


def _tiny_config(**overrides):
  values = dict(vocab_size=13, hidden_size=8, num_layers=2, num_heads=2,
                intermediate_size=12, max_position_embeddings=16)
  values.update(overrides)
  return bert.BertConfig(**values)


def _hf_config_dict(cfg):
  return {
      "architectures": ["BertModel"], "model_type": "bert",
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
      "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
      "intermediate_size": cfg.intermediate_size,
      "max_position_embeddings": cfg.max_position_embeddings,
      "type_vocab_size": cfg.type_vocab_size, "hidden_act": "gelu",
      "layer_norm_eps": 1e-12, "hidden_dropout_prob": 0.1,
      "attention_probs_dropout_prob": 0.1,
  }


def _hf_tensors(cfg, seed=0):
  """Random tensors with Hugging Face names and PyTorch layouts."""
  rng = np.random.default_rng(seed)
  h, i = cfg.hidden_size, cfg.intermediate_size
  tensors = {
      "embeddings.word_embeddings.weight": (cfg.vocab_size, h),
      "embeddings.position_embeddings.weight": (cfg.max_position_embeddings, h),
      "embeddings.token_type_embeddings.weight": (cfg.type_vocab_size, h),
      "embeddings.LayerNorm.weight": (h,),
      "embeddings.LayerNorm.bias": (h,),
      "pooler.dense.weight": (h, h),
      "pooler.dense.bias": (h,),
  }
  for layer in range(cfg.num_layers):
    prefix = f"encoder.layer.{layer}."
    for name in ("query", "key", "value"):
      tensors[prefix + f"attention.self.{name}.weight"] = (h, h)
      tensors[prefix + f"attention.self.{name}.bias"] = (h,)
    tensors[prefix + "attention.output.dense.weight"] = (h, h)
    tensors[prefix + "attention.output.dense.bias"] = (h,)
    tensors[prefix + "attention.output.LayerNorm.weight"] = (h,)
    tensors[prefix + "attention.output.LayerNorm.bias"] = (h,)
    tensors[prefix + "intermediate.dense.weight"] = (i, h)
    tensors[prefix + "intermediate.dense.bias"] = (i,)
    tensors[prefix + "output.dense.weight"] = (h, i)
    tensors[prefix + "output.dense.bias"] = (h,)
    tensors[prefix + "output.LayerNorm.weight"] = (h,)
    tensors[prefix + "output.LayerNorm.bias"] = (h,)
  return {name: rng.normal(size=shape).astype(np.float32) for name, shape in tensors.items()}


def _write_folder(folder, cfg, tensors, hf_config=None):
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "config.json").write_text(json.dumps(hf_config or _hf_config_dict(cfg)))
  (folder / "vocab.txt").write_text("\n".join(f"tok{i}" for i in range(cfg.vocab_size)) + "\n")
  save_file(tensors, str(folder / "model.safetensors"))
  return folder


def _numpy_bert(tensors, cfg, ids, mask):
  """BERT's forward pass written from the PyTorch layouts with numpy (erf GELU)."""
  from math import erf, sqrt

  gelu = np.vectorize(lambda v: 0.5 * v * (1.0 + erf(v / sqrt(2.0))))

  def layer_norm(x, prefix):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-12) * tensors[prefix + ".weight"] + tensors[prefix + ".bias"]

  def linear(x, prefix):
    return x @ tensors[prefix + ".weight"].T + tensors[prefix + ".bias"]

  batch, length = ids.shape
  x = (tensors["embeddings.word_embeddings.weight"][ids]
       + tensors["embeddings.position_embeddings.weight"][np.arange(length)][None]
       + tensors["embeddings.token_type_embeddings.weight"][np.zeros_like(ids)])
  x = layer_norm(x, "embeddings.LayerNorm")
  heads, dim = cfg.num_heads, cfg.head_dim
  for layer in range(cfg.num_layers):
    p = f"encoder.layer.{layer}."
    split = lambda t: t.reshape(batch, length, heads, dim).transpose(0, 2, 1, 3)
    q = split(linear(x, p + "attention.self.query"))
    k = split(linear(x, p + "attention.self.key"))
    v = split(linear(x, p + "attention.self.value"))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dim)
    scores = np.where(mask[:, None, None, :] > 0, scores, -1e30)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    context = (weights @ v).transpose(0, 2, 1, 3).reshape(batch, length, heads * dim)
    x = layer_norm(x + linear(context, p + "attention.output.dense"), p + "attention.output.LayerNorm")
    h = gelu(linear(x, p + "intermediate.dense"))
    x = layer_norm(x + linear(h, p + "output.dense"), p + "output.LayerNorm")
  return x


def test_loader_maps_layouts_like_pytorch(tmp_path):
  cfg = _tiny_config()
  tensors = _hf_tensors(cfg)
  folder = _write_folder(tmp_path / "tiny", cfg, tensors)
  loaded_cfg, params = bert.load_pretrained(str(folder))
  assert loaded_cfg == cfg
  ids = np.array([[2, 5, 7, 9, 3, 0], [2, 11, 3, 0, 0, 0]], np.int32)
  mask = (ids > 0).astype(np.int32)
  expected = _numpy_bert(tensors, cfg, ids, mask)
  hidden = _encode(cfg, params, ids, mask)
  np.testing.assert_allclose(hidden[mask > 0], expected[mask > 0], atol=1e-4, rtol=1e-4)


def test_loader_accepts_prefix_and_gamma_beta(tmp_path):
  cfg = _tiny_config(num_layers=1)
  tensors = _hf_tensors(cfg)
  renamed = {}
  for name, tensor in tensors.items():
    name = name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
    renamed["bert." + name] = tensor
  renamed["cls.predictions.bias"] = np.zeros(cfg.vocab_size, np.float32)
  _, plain = bert.load_pretrained(str(_write_folder(tmp_path / "plain", cfg, tensors)))
  _, prefixed = bert.load_pretrained(str(_write_folder(tmp_path / "prefixed", cfg, renamed)))
  chex.assert_trees_all_equal(plain, prefixed)


def test_loader_missing_folder_and_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="folder not found"):
    bert.load_pretrained(str(tmp_path / "absent"))
  cfg = _tiny_config(num_layers=1)
  for missing in ("config.json", "model.safetensors", "vocab.txt"):
    folder = _write_folder(tmp_path / missing, cfg, _hf_tensors(cfg))
    (folder / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing.replace(".", r"\.")):
      bert.load_pretrained(str(folder))


def test_loader_suggests_conversion_of_bin(tmp_path):
  cfg = _tiny_config(num_layers=1)
  folder = _write_folder(tmp_path / "bin", cfg, _hf_tensors(cfg))
  (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
  with pytest.raises(FileNotFoundError, match="convert_checkpoint.py"):
    bert.load_pretrained(str(folder))


def test_loader_rejects_other_architectures(tmp_path):
  cfg = _tiny_config(num_layers=1)
  roberta = dict(_hf_config_dict(cfg), model_type="roberta")
  folder = _write_folder(tmp_path / "roberta", cfg, _hf_tensors(cfg), roberta)
  with pytest.raises(ValueError, match="model_type is 'roberta'"):
    bert.load_pretrained(str(folder))
  gpt = dict(_hf_config_dict(cfg), architectures=["GPT2Model"])
  folder = _write_folder(tmp_path / "gpt", cfg, _hf_tensors(cfg), gpt)
  with pytest.raises(ValueError, match="GPT2Model"):
    bert.load_pretrained(str(folder))


def test_loader_names_bad_tensor(tmp_path):
  cfg = _tiny_config(num_layers=1)
  tensors = _hf_tensors(cfg)
  tensors["encoder.layer.0.intermediate.dense.weight"] = np.zeros((5, 8), np.float32)
  folder = _write_folder(tmp_path / "shape", cfg, tensors)
  with pytest.raises(ValueError, match=r"encoder\.layer\.0\.intermediate\.dense\.weight has shape \(5, 8\)"):
    bert.load_pretrained(str(folder))
  tensors = _hf_tensors(cfg)
  del tensors["encoder.layer.0.output.dense.bias"]
  folder = _write_folder(tmp_path / "missing", cfg, tensors)
  with pytest.raises(ValueError, match=r"encoder\.layer\.0\.output\.dense\.bias"):
    bert.load_pretrained(str(folder))
  # A checkpoint with more layers than its config.json says.
  tensors = _hf_tensors(_tiny_config(num_layers=2))
  folder = _write_folder(tmp_path / "extra", cfg, tensors)
  with pytest.raises(ValueError, match=r"encoder\.layer\.1\."):
    bert.load_pretrained(str(folder))


def test_loader_rejects_larger_vocab_file(tmp_path):
  cfg = _tiny_config(num_layers=1)
  folder = _write_folder(tmp_path / "vocab", cfg, _hf_tensors(cfg))
  (folder / "vocab.txt").write_text("\n".join(f"tok{i}" for i in range(40)) + "\n")
  with pytest.raises(ValueError, match="vocab.txt has 40 tokens"):
    bert.load_pretrained(str(folder))


def test_minilm_config_and_shapes(minilm, minilm_params):
  cfg, params = minilm_params
  assert cfg == bert.read_config(str(minilm))
  assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads) == (6, 384, 12)
  chex.assert_shape(params["embeddings"]["word_embeddings"]["embedding"], (30522, 384))
  chex.assert_shape(params["layer_5"]["attention"]["query"]["kernel"], (384, 12, 32))
  chex.assert_shape(params["layer_5"]["attention"]["out"]["kernel"], (12, 32, 384))
  chex.assert_tree_all_finite(params)


def test_random_init_shapes_and_dropout():
  cfg = bert.config_from_random_init(
      dict(vocab_size=64, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32))
  encoder = bert.BertEncoder(cfg)
  ids = jnp.array([[2, 9, 3, 0], [2, 7, 8, 3]])
  mask = (ids > 0).astype(jnp.int32)
  params = encoder.init(jax.random.PRNGKey(0), ids, mask)["params"]
  assert len([k for k in params if k.startswith("layer_")]) == 2
  chex.assert_shape(params["layer_1"]["intermediate"]["kernel"], (16, 32))
  eval_out = encoder.apply({"params": params}, ids, mask)
  train_out = encoder.apply({"params": params}, ids, mask, train=True,
                            rngs={"dropout": jax.random.PRNGKey(1)})
  chex.assert_shape(eval_out, (2, 4, 16))
  chex.assert_tree_all_finite((eval_out, train_out))
  assert not np.allclose(eval_out, train_out), "dropout must change training outputs"


def test_config_validation():
  with pytest.raises(ValueError, match="divisible"):
    _tiny_config(hidden_size=10, num_heads=3)
  with pytest.raises(ValueError, match="hidden_act"):
    _tiny_config(hidden_act="swish")
  with pytest.raises(ValueError, match="num_layers"):
    _tiny_config(num_layers=0)


def test_bfloat16_activations_keep_float32_params(minilm_params):
  cfg, params = minilm_params
  golden = np.load(GOLDEN)
  ids, mask = golden["input_ids"][:2], golden["attention_mask"][:2]
  encoder = bert.BertEncoder(cfg, dtype=jnp.bfloat16)
  hidden = encoder.apply({"params": params}, ids, mask)
  assert hidden.dtype == jnp.bfloat16
  reference = _encode(cfg, params, ids, mask)
  valid = mask.astype(bool)
  # bfloat16 keeps about 3 significant digits, so only a loose match is expected.
  assert np.abs(np.asarray(hidden, np.float32) - reference)[valid].max() < 0.25
  init = encoder.init(jax.random.PRNGKey(0), ids, mask)["params"]
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(init))


def _convert_tool():
  path = pathlib.Path(__file__).resolve().parents[1] / "tools" / "convert_checkpoint.py"
  spec = importlib.util.spec_from_file_location("convert_checkpoint", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_convert_checkpoint(tmp_path):
  convert = _convert_tool()
  cfg = _tiny_config(num_layers=1)
  tensors = _hf_tensors(cfg)
  folder = _write_folder(tmp_path / "bin", cfg, tensors)
  (folder / "model.safetensors").unlink()
  with pytest.raises(SystemExit, match="pytorch_model.bin not found"):
    convert.convert(str(folder))
  if not HAS_TORCH:
    (folder / "pytorch_model.bin").write_bytes(b"not read without torch")
    with pytest.raises(SystemExit, match="PyTorch is not installed"):
      convert.convert(str(folder))
    return
  import torch

  torch.save({name: torch.from_numpy(t) for name, t in tensors.items()}, folder / "pytorch_model.bin")
  convert.convert(str(folder))
  _, params = bert.load_pretrained(str(folder))
  _, expected = bert.load_pretrained(str(_write_folder(tmp_path / "st", cfg, tensors)))
  chex.assert_trees_all_equal(params, expected)
  with pytest.raises(SystemExit, match="already exists"):
    convert.convert(str(folder))
