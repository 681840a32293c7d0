"""Tests of the MCER module: switches, outputs, padding invariance, input errors."""

import importlib.util
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcer_jax.models import mcer

REPO = pathlib.Path(__file__).resolve().parents[1]
AUDIO_DIM, VISION_DIM, STEPS, VOCAB = 5, 20, 16, 64


def load_experiment(name):
  spec = importlib.util.spec_from_file_location(f"experiment_{name}", REPO / "experiments" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def demo_config(**overrides):
  config = load_experiment("demo")
  with config.unlocked():
    for key, value in overrides.items():
      node = config
      *parents, leaf = key.split(".")
      for parent in parents:
        node = node[parent]
      node[leaf] = value
  return config


def make_batch(seed, batch=4, text_len=12, steps=STEPS, text_lengths=None, frame_lengths=None):
  """A batch as the pipeline makes it: zero padding after each length."""
  rng = np.random.default_rng(seed)
  text_lengths = rng.integers(3, text_len + 1, batch) if text_lengths is None else np.asarray(text_lengths)
  ids = np.zeros((batch, text_len), np.int32)
  for row, n in enumerate(text_lengths):
    ids[row, :n] = rng.integers(4, VOCAB, n)
    ids[row, 0], ids[row, n - 1] = 2, 3  # [CLS] ... [SEP] stand-ins
  frames = {}
  for name, dim in (("audio", AUDIO_DIM), ("vision", VISION_DIM)):
    lengths = rng.integers(1, steps + 1, batch) if frame_lengths is None else np.asarray(frame_lengths)
    x = rng.normal(size=(batch, steps, dim)).astype(np.float32)
    x[np.arange(steps)[None, :] >= lengths[:, None]] = 0.0
    frames[name], frames[f"{name}_lengths"] = x, lengths.astype(np.int32)
  return dict(text_ids=ids, text_mask=(ids > 0).astype(np.int32), text_segment=np.zeros_like(ids),
              index=np.arange(batch, dtype=np.int32), weight=np.ones(batch, np.float32),
              labels=np.zeros(batch, np.float32), **frames)


def shapes(config, batch, dims=None, train=True):
  """Parameter and output shapes from jax.eval_shape (nothing is compiled)."""
  model = mcer.build_model(config, dims or {"audio": AUDIO_DIM, "vision": VISION_DIM, "text": None})
  rngs = {"params": jax.random.PRNGKey(0)}
  params = jax.eval_shape(lambda: model.init(rngs, batch, train=False))["params"]
  outputs = jax.eval_shape(lambda p: model.apply(
      {"params": p}, batch, train=train,
      rngs={"dropout": jax.random.PRNGKey(1), "sample": jax.random.PRNGKey(2)}), params)
  return params, outputs


ALL_HEADS = {"m", "t", "a", "v", "mt", "ma", "mv"}
ALL_MODULES = {"text_encoder", "audio_encoder", "vision_encoder", "multimodal",
               "unimodal_t", "unimodal_a", "unimodal_v", "sequence_t", "sequence_a",
               "sequence_v", "pairs", "cross_mt", "cross_ma", "cross_mv", "discriminators",
               "mi_ta", "mi_tv"}


def test_full_model_outputs_and_shapes():
  batch = make_batch(0, batch=4)
  params, out = shapes(demo_config(), batch)
  assert set(params) == ALL_MODULES
  assert set(out) == {"predictions", "features", "kl", "discriminator_logits",
                      "discriminator_targets", "mi"}
  assert set(out["predictions"]) == ALL_HEADS
  assert set(out["features"]) == ALL_HEADS
  for head in ALL_HEADS:
    chex.assert_shape(out["predictions"][head], (4,))
  feature_sizes = {"m": 128, "t": 32, "a": 16, "v": 32, "mt": 64, "ma": 64, "mv": 64}
  for head, size in feature_sizes.items():
    chex.assert_shape(out["features"][head], (4, size))
  assert set(out["kl"]) == {"m", "t", "a", "v"}
  chex.assert_shape(list(out["kl"].values()), (4,))
  # P = 3 pairs, L = 1 layer in the demo config.
  chex.assert_shape([out["discriminator_logits"], out["discriminator_targets"]], (3, 1, 2, 4))
  assert set(out["mi"]) == {"ta", "tv"}
  chex.assert_shape([out["mi"]["ta"][k] for k in ("mean", "logvar", "target")], (4, 16))
  chex.assert_shape([out["mi"]["tv"][k] for k in ("mean", "logvar", "target")], (4, 32))
  for leaf in jax.tree.leaves(out):
    assert leaf.dtype == jnp.float32
  # Every pair parameter carries the pair axis first.
  for leaf in jax.tree.leaves(params["pairs"]) + jax.tree.leaves(params["discriminators"]):
    assert leaf.shape[0] == 3


SWITCHES = [
    # (overrides, output keys removed, heads removed, kl keys removed, modules removed)
    ({"model.unimodal_tasks": False, "model.unimodal_bottleneck": False},
     set(), {"t", "a", "v"}, {"t", "a", "v"}, {"unimodal_t", "unimodal_a", "unimodal_v"}),
    ({"model.unimodal_bottleneck": False}, set(), set(), {"t", "a", "v"}, set()),
    ({"model.multimodal_bottleneck": False}, set(), set(), {"m"}, set()),
    ({"model.multimodal_bottleneck": False, "model.unimodal_bottleneck": False},
     {"kl"}, set(), {"m", "t", "a", "v"}, set()),
    ({"model.discriminator": False},
     {"discriminator_logits", "discriminator_targets"}, set(), set(), {"discriminators"}),
    ({"model.mutual_information": False}, {"mi"}, set(), set(), {"mi_ta", "mi_tv"}),
    ({"model.cross_tasks": "", "model.discriminator": False},
     {"discriminator_logits", "discriminator_targets"}, {"mt", "ma", "mv"}, set(),
     {"sequence_t", "sequence_a", "sequence_v", "pairs", "cross_mt", "cross_ma", "cross_mv",
      "discriminators"}),
    ({"model.cross_tasks": "mt,mv"}, set(), {"ma"}, set(), {"cross_ma"}),
]


@pytest.mark.parametrize("overrides,outputs_off,heads_off,kl_off,modules_off", SWITCHES)
def test_switch_removes_exactly_its_parts(overrides, outputs_off, heads_off, kl_off, modules_off):
  batch = make_batch(1)
  full_params, full_out = shapes(demo_config(), batch)
  params, out = shapes(demo_config(**overrides), batch)
  assert set(params) == set(full_params) - modules_off
  assert set(out) == set(full_out) - outputs_off
  assert set(out["predictions"]) == ALL_HEADS - heads_off
  assert set(out["features"]) == ALL_HEADS - heads_off
  assert set(out.get("kl", {})) == {"m", "t", "a", "v"} - kl_off
  # Modules that stay keep exactly the same parameters, except the variational
  # encoders that the bottleneck switches remove.
  for name in set(params) - {"multimodal", "unimodal_t", "unimodal_a", "unimodal_v"}:
    chex.assert_trees_all_equal_shapes(params[name], full_params[name])
  for head, name in (("m", "multimodal"), ("t", "unimodal_t"), ("a", "unimodal_a"), ("v", "unimodal_v")):
    if name in params:
      assert ("encoder" in params[name]["head"]) == (head not in kl_off)


def test_cross_task_subset_keeps_needed_pairs():
  batch = make_batch(2)
  expectations = {"mt": 2, "ma": 2, "mv": 2, "mt,ma": 3, "ma,mv": 3}
  for tasks, pairs in expectations.items():
    params, out = shapes(demo_config(**{"model.cross_tasks": tasks}), batch)
    assert set(out["predictions"]) == {"m", "t", "a", "v", *tasks.split(",")}
    for leaf in jax.tree.leaves(params["pairs"]):
      assert leaf.shape[0] == pairs
    chex.assert_shape(out["discriminator_logits"], (pairs, 1, 2, 4))
  assert mcer.active_pairs(("mt",)) == ("ta", "tv")
  assert mcer.active_pairs(("ma",)) == ("ta", "av")
  assert mcer.active_pairs(("mv",)) == ("tv", "av")


def test_mi_entropy_adds_projection():
  batch = make_batch(11)
  plain, plain_out = shapes(demo_config(), batch)
  params, out = shapes(demo_config(**{"loss.mi_entropy": True}), batch)
  for pair, size in (("ta", 16), ("tv", 32)):
    assert set(params[f"mi_{pair}"]) == set(plain[f"mi_{pair}"]) | {"entropy_projection"}
    chex.assert_shape(params[f"mi_{pair}"]["entropy_projection"]["kernel"], (size, size // 4))
    chex.assert_shape(out["mi"][pair]["entropy_features"], (4, size // 4))
    assert "entropy_features" not in plain_out["mi"][pair]


def test_self_mm_experiment_builds_only_m_and_s():
  params, out = shapes(load_experiment("self_mm"), make_batch(3),
                       {"audio": AUDIO_DIM, "vision": VISION_DIM})
  assert set(params) == {"text_encoder", "audio_encoder", "vision_encoder", "multimodal",
                         "unimodal_t", "unimodal_a", "unimodal_v"}
  assert set(out) == {"predictions", "features"}
  assert set(out["predictions"]) == {"m", "t", "a", "v"}
  assert "encoder" not in params["multimodal"]["head"]


def test_bfloat16_keeps_float32_params_and_outputs():
  params, out = shapes(demo_config(**{"model.dtype": "bfloat16"}), make_batch(4))
  for leaf in jax.tree.leaves(params):
    assert leaf.dtype == jnp.float32
  for leaf in jax.tree.leaves(out):
    assert leaf.dtype == jnp.float32


def test_float64_needs_x64_mode_and_keeps_float64_throughout():
  config = demo_config(**{"model.dtype": "float64"})
  dims = {"audio": AUDIO_DIM, "vision": VISION_DIM, "text": None}
  with jax.enable_x64(False):
    with pytest.raises(ValueError, match="jax_enable_x64"):
      mcer.build_model(config, dims)
  with jax.enable_x64(True):
    batch = make_batch(4)
    model = mcer.build_model(config, dims)
    params = mcer.init_params(model, jax.random.PRNGKey(0), batch, config)
    out = jax.eval_shape(lambda p: model.apply(
        {"params": p}, batch, train=True,
        rngs={"dropout": jax.random.PRNGKey(1), "sample": jax.random.PRNGKey(2)}), params)
  for leaf in jax.tree.leaves(params):
    assert leaf.dtype == jnp.float64
  # Every float output (the discriminator targets are exact 0 and 1).
  for path, leaf in jax.tree_util.tree_leaves_with_path(out):
    if "discriminator_targets" not in jax.tree_util.keystr(path):
      assert leaf.dtype == jnp.float64, jax.tree_util.keystr(path)


@pytest.mark.parametrize("finetune", [True, False])
def test_frozen_text_encoder_gets_no_gradient(finetune):
  config = demo_config(**{"text_encoder.finetune": finetune})
  batch = make_batch(7)
  model = mcer.build_model(config, {"audio": AUDIO_DIM, "vision": VISION_DIM, "text": None})
  params = mcer.init_params(model, jax.random.PRNGKey(0), batch, config)

  def loss(p):
    out = model.apply({"params": p}, batch, train=False)
    return sum(jnp.sum(prediction ** 2) for prediction in out["predictions"].values())

  grads = jax.grad(loss)(params)
  text_norm = sum(float(jnp.sum(g ** 2)) for g in jax.tree.leaves(grads["text_encoder"]))
  other_norm = sum(float(jnp.sum(g ** 2)) for g in jax.tree.leaves(grads["multimodal"]))
  assert other_norm > 0
  if finetune:
    assert text_norm > 0
  else:
    assert text_norm == 0.0


def test_precomputed_text_features():
  batch = make_batch(5)
  del batch["text_ids"], batch["text_segment"]
  batch["text_features"] = np.random.default_rng(0).normal(size=(4, 12, 30)).astype(np.float32)
  params, out = shapes(demo_config(), batch, {"audio": AUDIO_DIM, "vision": VISION_DIM, "text": 30})
  assert set(params["text_encoder"]) == {"projection"}
  chex.assert_shape(params["text_encoder"]["projection"]["kernel"], (30, 128))
  chex.assert_shape(out["mi"]["ta"]["mean"], (4, 16))
  assert set(out["predictions"]) == ALL_HEADS


def test_config_and_batch_errors():
  with pytest.raises(ValueError, match="unknown tasks"):
    mcer.parse_cross_tasks("mt,xy")
  with pytest.raises(ValueError, match="discriminator"):
    mcer.build_model(demo_config(**{"model.cross_tasks": ""}), {"audio": 5, "vision": 20})
  with pytest.raises(ValueError, match="unimodal_bottleneck"):
    mcer.build_model(demo_config(**{"model.unimodal_tasks": False}), {"audio": 5, "vision": 20})
  with pytest.raises(ValueError, match="dtype"):
    mcer.build_model(demo_config(**{"model.dtype": "float16"}), {"audio": 5, "vision": 20})
  with pytest.raises(ValueError, match="'vision' size"):
    mcer.build_model(demo_config(), {"audio": 5})
  batch = make_batch(6)
  with pytest.raises(ValueError, match=r"batch\['audio'\] has 5 features per step, but the model was built for 74"):
    shapes(demo_config(), batch, {"audio": 74, "vision": VISION_DIM})
  del batch["vision_lengths"]
  with pytest.raises(ValueError, match="no field 'vision_lengths'"):
    shapes(demo_config(), batch)


def test_text_pooling_mean():
  config = demo_config(**{"text_encoder.pooling": "mean"})
  model = mcer.build_model(config, {"audio": AUDIO_DIM, "vision": VISION_DIM})
  assert model.text_pooling == "mean"
  with pytest.raises(ValueError, match="pooling"):
    shapes(demo_config(**{"text_encoder.pooling": "max"}), make_batch(7))


@pytest.fixture(scope="module")
def demo_model():
  """The demo model with two layers, initialised once (compiled init)."""
  config = demo_config(**{"model.cross.num_layers": 2})
  model = mcer.build_model(config, {"audio": AUDIO_DIM, "vision": VISION_DIM})
  params = mcer.init_params(model, jax.random.PRNGKey(0), make_batch(8), config)
  apply = jax.jit(lambda p, b: model.apply({"params": p}, b, train=False))
  return model, params, apply


def test_full_model_padding_invariance(demo_model):
  _, params, apply = demo_model
  batch = make_batch(9, batch=4, text_len=12, steps=STEPS,
                     text_lengths=[12, 5, 9, 4], frame_lengths=[16, 6, 11, 3])
  out = apply(params, batch)
  chex.assert_tree_all_finite(out)
  row, text_n, frames_n = 1, 5, 6
  # The same sample alone, cut to its own lengths: text 5 tokens, 6 frames.
  alone = {key: value[row:row + 1] for key, value in batch.items()}
  for key in ("text_ids", "text_mask", "text_segment"):
    alone[key] = alone[key][:, :text_n]
  for key in ("audio", "vision"):
    alone[key] = alone[key][:, :frames_n]
  single = apply(params, alone)
  for head in ALL_HEADS:
    np.testing.assert_allclose(single["predictions"][head][0], out["predictions"][head][row], atol=1e-4)
    np.testing.assert_allclose(single["features"][head][0], out["features"][head][row], atol=1e-4)
  np.testing.assert_allclose(single["discriminator_logits"][..., 0],
                             out["discriminator_logits"][..., row], atol=1e-4)
  np.testing.assert_allclose(single["mi"]["tv"]["mean"][0], out["mi"]["tv"]["mean"][row], atol=1e-4)


def test_training_outputs_differ_and_are_finite(demo_model):
  model, params, apply = demo_model
  batch = make_batch(10)
  train = jax.jit(lambda p, b, r: model.apply({"params": p}, b, train=True,
                                              rngs={"dropout": r, "sample": r}))
  first = train(params, batch, jax.random.PRNGKey(0))
  second = train(params, batch, jax.random.PRNGKey(1))
  chex.assert_tree_all_finite((first, second))
  assert not np.allclose(first["predictions"]["m"], second["predictions"]["m"])
  # Evaluation is deterministic: z = mu and no dropout.
  chex.assert_trees_all_close(apply(params, batch), apply(params, batch))


def test_mutual_information_head_values():
  rng = np.random.default_rng(12)
  x = rng.normal(size=(3, 10)).astype(np.float32)
  y = rng.normal(size=(3, 8)).astype(np.float32)
  head = mcer.MutualInformationHead(hidden_dim=6, entropy_dim=2)
  params = head.init(jax.random.PRNGKey(0), x, y)["params"]
  out = head.apply({"params": params}, x, y)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  mlp = lambda name: (np.maximum(x @ p[f"{name}_hidden"]["kernel"] + p[f"{name}_hidden"]["bias"], 0)
                      @ p[f"{name}_output"]["kernel"] + p[f"{name}_output"]["bias"])
  np.testing.assert_allclose(out["mean"], mlp("mean"), atol=1e-5)
  np.testing.assert_allclose(out["logvar"], mlp("logvar"), atol=1e-5)
  np.testing.assert_array_equal(out["target"], y)
  entropy = np.tanh(y @ p["entropy_projection"]["kernel"] + p["entropy_projection"]["bias"])
  np.testing.assert_allclose(out["entropy_features"], entropy, atol=1e-5)
