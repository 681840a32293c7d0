"""init_params + apply on CPU for the experiment configs (mosi with MiniLM, self_mm, demo)."""

import importlib.util
import pathlib

import chex
import jax
import numpy as np

from mcer_jax.data import safe_pickle
from mcer_jax.models import bert
from mcer_jax.models import mcer

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_experiment(name):
  spec = importlib.util.spec_from_file_location(f"experiment_{name}", REPO / "experiments" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def real_batch(mosi_real, rows=6):
  """A batch of real MOSI samples (MMSA layout), word-aligned audio 74 and vision 47."""
  split = safe_pickle.load(mosi_real / "mmsa" / "unaligned_50.pkl")["valid"]
  text = np.asarray(split["text_bert"][:rows])
  lengths = text[:, 1].sum(1).astype(int)
  cut = int(lengths.max())  # As a text bucket would cut it.
  return {
      "text_ids": text[:, 0, :cut].astype(np.int32),
      "text_mask": text[:, 1, :cut].astype(np.int32),
      "text_segment": text[:, 2, :cut].astype(np.int32),
      "audio": np.nan_to_num(np.asarray(split["audio"][:rows], np.float32), neginf=0.0, posinf=0.0),
      "audio_lengths": np.maximum(np.asarray(split["audio_lengths"][:rows], np.int32), 1),
      "vision": np.asarray(split["vision"][:rows], np.float32),
      "vision_lengths": np.maximum(np.asarray(split["vision_lengths"][:rows], np.int32), 1),
      "index": np.arange(rows, dtype=np.int32),
  }


def run(config, batch, train):
  dims = {"audio": batch["audio"].shape[-1], "vision": batch["vision"].shape[-1], "text": None}
  model = mcer.build_model(config, dims)
  params = mcer.init_params(model, jax.random.PRNGKey(0), batch, config)
  rng = jax.random.PRNGKey(1)
  apply = jax.jit(lambda p, b: model.apply({"params": p}, b, train=train,
                                           rngs={"dropout": rng, "sample": rng}))
  outputs = apply(params, batch)
  chex.assert_tree_all_finite(outputs)
  return model, params, outputs


def test_mosi_config_with_minilm(minilm, mosi_real):
  config = load_experiment("mosi")
  with config.unlocked():
    config.text_encoder.checkpoint = str(minilm)
  batch = real_batch(mosi_real)
  _, params, out = run(config, batch, train=False)
  _, pretrained = bert.load_pretrained(str(minilm))
  # init_params put the checkpoint's weights in place of the random BERT.
  chex.assert_trees_all_equal(params["text_encoder"], pretrained)
  assert set(out["predictions"]) == {"m", "t", "a", "v", "mt", "ma", "mv"}
  chex.assert_shape(out["discriminator_logits"], (3, 2, 2, 6))
  chex.assert_shape(out["mi"]["ta"]["target"], (6, 16))
  chex.assert_shape(out["features"]["m"], (6, 128))


def test_self_mm_config(mosi_real):
  batch = real_batch(mosi_real)
  _, params, out = run(load_experiment("self_mm"), batch, train=True)
  assert set(out) == {"predictions", "features"}
  assert set(out["predictions"]) == {"m", "t", "a", "v"}
  chex.assert_shape(list(out["predictions"].values()), (6,))


def test_demo_config_synthetic_shapes():
  rng = np.random.default_rng(0)
  rows, length = 8, 16
  lengths = rng.integers(2, length + 1, rows)
  ids = np.where(np.arange(length)[None] < lengths[:, None], rng.integers(1, 64, (rows, length)), 0)
  batch = {
      "text_ids": ids.astype(np.int32),
      "text_mask": (ids > 0).astype(np.int32),
      "text_segment": np.zeros((rows, length), np.int32),
      "audio": rng.normal(size=(rows, length, 5)).astype(np.float32),
      "audio_lengths": rng.integers(1, length + 1, rows).astype(np.int32),
      "vision": rng.normal(size=(rows, length, 20)).astype(np.float32),
      "vision_lengths": rng.integers(1, length + 1, rows).astype(np.int32),
      "index": np.arange(rows, dtype=np.int32),
  }
  model, params, out = run(load_experiment("demo"), batch, train=True)
  assert model.text_config.vocab_size == 64
  chex.assert_shape(params["text_encoder"]["embeddings"]["word_embeddings"]["embedding"], (64, 32))
  chex.assert_shape(out["discriminator_logits"], (3, 1, 2, rows))
  assert set(out["kl"]) == {"m", "t", "a", "v"}
