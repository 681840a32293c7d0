"""Prints MCER's parameter counts per component, without weights or compilation.

Shapes come from `jax.eval_shape` of the model's init, so BERT-base costs no
memory. Two text encoders are counted: bert-base-uncased (the paper's) and
all-MiniLM-L6-v2 (the one the tests use), each with the model settings of
an experiment config.

Run:
  python tools/param_counts.py                       # experiments/mosi.py, COVAREP 74 / Facet 47
  python tools/param_counts.py --config experiments/self_mm.py --audio-dim 5 --vision-dim 20
"""

import argparse
import importlib.util
import math
import os

import flax.core
import jax
import jax.numpy as jnp
import ml_collections

from mcer_jax.models import bert
from mcer_jax.models import mcer

TEXT_ENCODERS = {
    "bert-base-uncased": bert.BertConfig(
        vocab_size=30522, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
    "all-MiniLM-L6-v2": bert.BertConfig(
        vocab_size=30522, hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536),
}

# Components of the paper and the top-level submodules of MCER that make them.
COMPONENTS = {
    "text encoder (BERT)": ("text_encoder",),
    "audio encoder (LSTM)": ("audio_encoder",),
    "vision encoder (LSTM)": ("vision_encoder",),
    "multimodal task (M)": ("multimodal",),
    "unimodal tasks (S)": ("unimodal_t", "unimodal_a", "unimodal_v"),
    "cross-modal task (C)": ("sequence_t", "sequence_a", "sequence_v", "pairs",
                             "cross_mt", "cross_ma", "cross_mv"),
    "modality discriminator": ("discriminators",),
    "mutual information (MI)": ("mi_ta", "mi_tv"),
}


def load_config(path: str) -> ml_collections.ConfigDict:
  """Runs `get_config()` of an experiment file."""
  spec = importlib.util.spec_from_file_location("experiment", path)
  if spec is None or spec.loader is None:
    raise SystemExit(f"{path}: not a Python experiment config.")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def example_batch(length: int, audio_dim: int, vision_dim: int) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes of a two-sample batch; parameter shapes do not depend on them."""
  ints = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
  floats = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  return {
      "text_ids": ints(2, length), "text_mask": ints(2, length), "text_segment": ints(2, length),
      "audio": floats(2, length, audio_dim), "audio_lengths": ints(2),
      "vision": floats(2, length, vision_dim), "vision_lengths": ints(2),
  }


def count_parameters(config: ml_collections.ConfigDict, text_config: bert.BertConfig,
                     audio_dim: int, vision_dim: int) -> dict[str, int]:
  """Returns the number of parameters of each top-level submodule."""
  mcer.check_model_config(config.model)
  model = mcer.MCER(
      config=ml_collections.FrozenConfigDict(config.model),
      text_config=text_config,
      feature_dims=flax.core.FrozenDict({"audio": audio_dim, "vision": vision_dim}),
      text_pooling=config.text_encoder.pooling,
  )
  batch = example_batch(config.data.max_text_len, audio_dim, vision_dim)
  params = jax.eval_shape(
      lambda b: model.init({"params": jax.random.PRNGKey(0)}, b, train=False), batch)["params"]
  return {name: sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))
          for name, tree in params.items()}


def main() -> None:
  """Prints one table per text encoder."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default=os.path.join("experiments", "mosi.py"),
                      help="Experiment config file whose config.model is counted.")
  parser.add_argument("--audio-dim", type=int, default=74, help="Audio features per frame (COVAREP: 74).")
  parser.add_argument("--vision-dim", type=int, default=47, help="Vision features per frame (Facet: 47).")
  args = parser.parse_args()
  config = load_config(args.config)
  print(f"config {args.config}, audio {args.audio_dim}, vision {args.vision_dim}")
  for encoder_name, text_config in TEXT_ENCODERS.items():
    counts = count_parameters(config, text_config, args.audio_dim, args.vision_dim)
    print(f"\n{encoder_name}")
    total = 0
    for component, modules in COMPONENTS.items():
      present = [name for name in modules if name in counts]
      if not present:
        print(f"  {component:28s} {'off':>12s}")
        continue
      number = sum(counts[name] for name in present)
      total += number
      print(f"  {component:28s} {number:12,d}")
    unlisted = sorted(set(counts) - {n for modules in COMPONENTS.values() for n in modules})
    if unlisted:
      raise SystemExit(f"submodules missing from COMPONENTS: {unlisted}")
    print(f"  {'total':28s} {total:12,d}")
    print(f"  {'total without BERT':28s} {total - counts['text_encoder']:12,d}")


if __name__ == "__main__":
  main()
