"""Adam with the four learning-rate groups of MCER and Self-MM.

Parameters are grouped by their top-level module: `text_encoder` (BERT),
`audio_encoder`, `vision_encoder`, and everything else. Weight decay is the
L2 penalty that `torch.optim.Adam(weight_decay=...)` adds to the gradient,
which is what Self-MM uses, and BERT's biases and LayerNorm parameters get
none.
"""

from typing import Any

import flax.traverse_util
import jax
import ml_collections
import optax

GROUPS = ("bert", "audio", "vision", "other")
_GROUP_OF_MODULE = {
    "text_encoder": "bert",
    "audio_encoder": "audio",
    "vision_encoder": "vision",
}


def param_groups(params: Any) -> Any:
  """Returns a tree like `params` with each leaf's group name."""
  flat = flax.traverse_util.flatten_dict(params)
  groups = {path: _GROUP_OF_MODULE.get(path[0], "other") for path in flat}
  return flax.traverse_util.unflatten_dict(groups)


def _is_bert_bias_or_layer_norm(path: tuple[str, ...]) -> bool:
  # Flax's LayerNorm names its parameters `scale` and `bias`.
  return path[-1] in ("bias", "scale") or any(
      "layernorm" in name.lower().replace("_", "") for name in path
  )


def weight_decay_mask(params: Any) -> Any:
  """Returns a tree of booleans: True where weight decay applies."""
  flat = flax.traverse_util.flatten_dict(params)
  mask = {
      path: not (path[0] == "text_encoder" and _is_bert_bias_or_layer_norm(path))
      for path in flat
  }
  return flax.traverse_util.unflatten_dict(mask)


def create_optimizer(
    optim_config: ml_collections.ConfigDict, params: Any, finetune_text: bool = True
) -> optax.GradientTransformation:
  """Builds Adam with per-group learning rates and L2 weight decay.

  The decay is added to the gradient before Adam's moments, as
  `torch.optim.Adam(weight_decay=...)` does, so every group's masked decay
  comes first and the per-group Adam second.

  Args:
    optim_config: `config.optim`.
    params: the model parameters; only their tree structure is used.
    finetune_text: False freezes BERT (its updates are zero).

  Returns:
    An optax transformation for the whole parameter tree.
  """
  groups = param_groups(params)
  decay_mask = weight_decay_mask(params)
  steps = []
  if optim_config.grad_clip_norm > 0:
    steps.append(optax.clip_by_global_norm(optim_config.grad_clip_norm))
  for name in GROUPS:
    decay = optim_config[f"weight_decay_{name}"]
    if decay > 0:
      group_mask = jax.tree.map(lambda g, m, name=name: g == name and m, groups, decay_mask)
      steps.append(optax.add_decayed_weights(decay, mask=group_mask))

  def adam_or_frozen(name: str) -> optax.GradientTransformation:
    if name == "bert" and not finetune_text:
      return optax.set_to_zero()
    return optax.adam(optim_config[f"lr_{name}"])

  steps.append(optax.multi_transform({name: adam_or_frozen(name) for name in GROUPS}, groups))
  return optax.chain(*steps)
