"""MCER's forward pass: shared encoders, the M, S and C tasks, and the regularisers' inputs.

Paper symbols and their code names (B batch, L text tokens, T frames):

  X_t    [B, H]         `text_encoder` (BERT) final-layer [CLS] vector, or
                        the masked mean with `text_pooling="mean"`
  X_a/X_v [B, out]      `audio_encoder` / `vision_encoder`: LSTM, last valid
                        hidden state, dropout, linear
  F'_m   [B, fusion]    `multimodal` layer_1: ReLU(W1m [X_t; X_a; X_v])
  H_s    [B, post_s]    `unimodal_{t,a,v}` layer_1: ReLU(W1s X_s)
  M_s    [B, T_c, d]    `sequence_{t,a,v}`: BiGRU + linear over the token
                        states (text) or LSTM hidden states (audio, vision),
                        padded or cut to T_c = config.model.cross.length
  H_sm   [B, 2d]        `pairs`: gated transformer heads of the active
                        pairs among ta, tv, av
  h_c    [B, head]      `cross_{mt,ma,mv}` hidden layer on [H_..; H_..]
  q(y|x)                `mi_{ta,tv}`: x = X_t, y = X_a or X_v

Every top-level submodule above is a parameter subtree of the same name, and
the modality discriminators are `discriminators`. The gated transformers of
all active pairs run as one vmapped module, so every parameter under `pairs`
and `discriminators` has a leading axis of size P (the active pairs, in
PAIRS order). The switches of `config.model` add or remove exactly their
subtrees, pair slices and output keys (see `MCER.__call__`).

Some releases carry precomputed text features instead of token ids. For
batches with `text_features` [B, L, d_t], `text_encoder` is a linear
projection to `config.model.text_projection_dim` in place of BERT, and X_t
is pooled from the projected sequence in the same way.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.core
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mcer_jax.models import bert
from mcer_jax.models import bottleneck
from mcer_jax.models import gated_transformer
from mcer_jax.models import sequence

Array = jax.Array

MODALITIES = ("t", "a", "v")
PAIRS = ("ta", "tv", "av")  # Order of the P axis of the discriminator outputs.
# The two pair heads each modality-dominated fusion concatenates.
CROSS_TASKS = {"mt": ("ta", "tv"), "ma": ("ta", "av"), "mv": ("tv", "av")}
MI_PAIRS = ("ta", "tv")  # x = X_t; y = X_a, X_v.
TEXT_POOLINGS = ("cls", "mean")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}


def parse_cross_tasks(spec: str) -> tuple[str, ...]:
  """Parses config.model.cross_tasks ("mt,ma,mv", a subset, or "") into task names."""
  names = [name.strip() for name in spec.split(",") if name.strip()]
  unknown = [name for name in names if name not in CROSS_TASKS]
  if unknown:
    raise ValueError(
        f"config.model.cross_tasks={spec!r} has unknown tasks {unknown}; use a "
        "comma-separated subset of mt,ma,mv, or '' to disable the cross-modal task.")
  if len(set(names)) != len(names):
    raise ValueError(f"config.model.cross_tasks={spec!r} names a task twice.")
  return tuple(name for name in CROSS_TASKS if name in names)


def active_pairs(cross_tasks: tuple[str, ...]) -> tuple[str, ...]:
  """Returns the modality pairs the given cross tasks need, in PAIRS order."""
  needed = {pair for task in cross_tasks for pair in CROSS_TASKS[task]}
  return tuple(pair for pair in PAIRS if pair in needed)


def check_model_config(model_config: Any) -> None:
  """Raises ValueError for switch settings that cannot build a model."""
  if model_config.dtype not in _DTYPES:
    raise ValueError(
        f"config.model.dtype={model_config.dtype!r}; expected one of {sorted(_DTYPES)}.")
  if model_config.dtype == "float64" and not jax.config.jax_enable_x64:
    raise ValueError(
        "config.model.dtype='float64' needs JAX's 64-bit mode, which is off: set the "
        "environment variable JAX_ENABLE_X64=1 or call "
        "jax.config.update('jax_enable_x64', True) first (python -m mcer_jax.main does this).")
  cross_tasks = parse_cross_tasks(model_config.cross_tasks)
  if model_config.discriminator and not cross_tasks:
    raise ValueError(
        "config.model.discriminator=True needs the cross-modal task, whose "
        "gated layers it classifies, but config.model.cross_tasks is ''. Set "
        "config.model.discriminator=False.")
  if model_config.unimodal_bottleneck and not model_config.unimodal_tasks:
    raise ValueError(
        "config.model.unimodal_bottleneck=True needs the unimodal heads, but "
        "config.model.unimodal_tasks is False. Set "
        "config.model.unimodal_bottleneck=False.")
  if model_config.cross.first_layer_summary not in gated_transformer.SUMMARY_KINDS:
    raise ValueError(
        f"config.model.cross.first_layer_summary={model_config.cross.first_layer_summary!r}; "
        f"expected one of {gated_transformer.SUMMARY_KINDS}.")
  if model_config.cross.dim % model_config.cross.num_heads:
    raise ValueError(
        f"config.model.cross.dim ({model_config.cross.dim}) must be divisible by "
        f"config.model.cross.num_heads ({model_config.cross.num_heads}).")


def fit_length(x: Array, lengths: Array, length: int) -> tuple[Array, Array]:
  """Zero-pads or cuts x [B, T, D] to [B, length, D] and clips lengths to [1, length]."""
  steps = x.shape[1]
  if steps >= length:
    x = x[:, :length]
  else:
    x = jnp.pad(x, ((0, 0), (0, length - steps), (0, 0)))
  return x, sequence.clip_lengths(lengths, length)


class TaskHead(nn.Module):
  """Representation layer and regression head of the M task or one S task.

  Attributes:
    representation_dim: size of F'_m or H_s.
    dropout_rate: dropout on the input.
    stochastic: variational bottleneck on (M-MIB / S-MIB) or off.
    latent_dim: size of z.
    min_sigma: lower bound of the std.
    dtype: activation dtype.
  """

  representation_dim: int
  dropout_rate: float
  stochastic: bool
  latent_dim: int
  min_sigma: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, sample_ids: Array, *,
               train: bool) -> tuple[Array, Array, Array | None]:
    """Maps x [B, D] to (F [B, representation_dim], prediction [B], KL [B] or None)."""
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    features = nn.relu(nn.Dense(self.representation_dim, dtype=self.dtype,
                                name="layer_1")(x))
    prediction, kl = bottleneck.RegressionHead(
        self.representation_dim, self.stochastic, self.latent_dim,
        self.min_sigma, self.dtype, name="head")(features, sample_ids, train=train)
    return features, prediction, kl


class CrossHead(nn.Module):
  """Modality-dominated fusion c: h_c = ReLU(Wc1 h_p + b), y_c = Wc2 h_c + b.

  Attributes:
    hidden_dim: size of h_c.
    dropout_rate: dropout on h_p.
    dtype: activation dtype.
  """

  hidden_dim: int
  dropout_rate: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h_p: Array, *, train: bool) -> tuple[Array, Array]:
    """Maps h_p [B, 4d] to (h_c [B, hidden_dim], prediction [B] float32)."""
    h_p = nn.Dropout(self.dropout_rate)(h_p, deterministic=not train)
    h_c = nn.relu(nn.Dense(self.hidden_dim, dtype=self.dtype, name="hidden")(h_p))
    prediction = nn.Dense(1, dtype=self.dtype, name="output")(h_c)[:, 0]
    return h_c, prediction.astype(bottleneck.output_dtype(self.dtype))


class MutualInformationHead(nn.Module):
  """q(y|x) of the MI bound: a diagonal Gaussian whose mean and log-variance are two-layer MLPs of x.

  With `entropy_dim` > 0 it also projects y for MMIM's Gaussian-mixture
  estimate of H(y): entropy_features = tanh(W y + b), as in MMIM.

  Attributes:
    hidden_dim: hidden width of both MLPs.
    entropy_dim: width of the entropy projection; 0 leaves it out.
    dtype: activation dtype.
  """

  hidden_dim: int
  entropy_dim: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, y: Array) -> dict[str, Array]:
    """Maps x [B, D_x] and y [B, d] to mean, logvar and target [B, d] (and entropy_features [B, entropy_dim]), float32."""
    def mlp(name: str) -> Array:
      h = nn.relu(nn.Dense(self.hidden_dim, dtype=self.dtype, name=f"{name}_hidden")(x))
      return nn.Dense(y.shape[-1], dtype=self.dtype, name=f"{name}_output")(h)

    out_dtype = bottleneck.output_dtype(self.dtype)
    out = {"mean": mlp("mean").astype(out_dtype),
           "logvar": mlp("logvar").astype(out_dtype),
           "target": y.astype(out_dtype)}
    if self.entropy_dim:
      projected = nn.Dense(self.entropy_dim, dtype=self.dtype, name="entropy_projection")(y)
      out["entropy_features"] = jnp.tanh(projected).astype(out_dtype)
    return out


class TextFeatureEncoder(nn.Module):
  """Linear projection of precomputed text features, used in place of BERT.

  Attributes:
    out_dim: projected width (config.model.text_projection_dim).
    dropout_rate: dropout on the projected sequence.
    dtype: activation dtype.
  """

  out_dim: int
  dropout_rate: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: Array, *, train: bool) -> Array:
    """Maps features [B, L, d_t] to [B, L, out_dim]."""
    x = nn.Dense(self.out_dim, dtype=self.dtype, name="projection")(features.astype(self.dtype))
    return nn.Dropout(self.dropout_rate)(x, deterministic=not train)


def _check_batch(batch: Mapping[str, Any], feature_dims: Mapping[str, int],
                 uses_text_ids: bool) -> None:
  """Raises ValueError naming the batch field whose presence or shape is wrong."""
  text_keys = ("text_ids", "text_mask") if uses_text_ids else ("text_features",)
  for key in text_keys + ("audio", "audio_lengths", "vision", "vision_lengths"):
    if key not in batch:
      hint = ""
      if key == "text_features":
        hint = " (the model was built for precomputed text features)"
      elif key == "text_ids":
        hint = (" (the model was built for token ids; build it with "
                "feature_dims['text_features'] for precomputed text features)")
      raise ValueError(f"batch has no field {key!r}{hint}; fields: {sorted(batch)}.")
  batch_size = batch["audio"].shape[0]
  ranks = {"audio": 3, "vision": 3, "audio_lengths": 1, "vision_lengths": 1}
  ranks.update({"text_ids": 2, "text_mask": 2} if uses_text_ids else {"text_features": 3})
  for key, rank in ranks.items():
    shape = batch[key].shape
    if len(shape) != rank or shape[0] != batch_size:
      raise ValueError(
          f"batch[{key!r}] has shape {tuple(shape)}; expected {rank} axes with "
          f"batch size {batch_size} first.")
  for key in ("audio", "vision", "text_features"):
    if key in feature_dims and key in batch:
      found = batch[key].shape[-1]
      if found != feature_dims[key]:
        raise ValueError(
            f"batch[{key!r}] has {found} features per step, but the model was "
            f"built for {feature_dims[key]}; build the model from this data's "
            "feature sizes.")


class MCER(nn.Module):
  """The MCER model (Self-MM when the cross-modal task and regularisers are off).

  Attributes:
    config: `config.model`.
    text_config: the BERT config, or None for precomputed text features.
    feature_dims: {"audio": d_a, "vision": d_v}, plus {"text_features": d_t}
      when batches carry precomputed text features (build_model makes it).
    text_pooling: "cls" (X_t is the [CLS] state) or "mean" (masked mean).
    mi_entropy: adds `entropy_features` to each `mi` pair, the projected
      target of MMIM's H(y) estimate (config.loss.mi_entropy).
  """

  config: Any
  text_config: bert.BertConfig | None
  feature_dims: Mapping[str, int]
  text_pooling: str = "cls"
  mi_entropy: bool = False
  # True when config.text_encoder.finetune is False: no gradient reaches the
  # text encoder, so its backward pass is never computed.
  freeze_text: bool = False

  def _encode_text(self, batch: Mapping[str, Array], train: bool,
                   dtype: Any) -> tuple[Array, Array, Array]:
    """Returns (X_t [B, H], token states [B, L, H], lengths [B])."""
    cfg = self.config
    if self.text_config is not None:
      text_config = dataclasses.replace(
          self.text_config, hidden_dropout=cfg.text_dropout,
          attention_dropout=cfg.text_dropout)
      mask = batch["text_mask"]
      states = bert.BertEncoder(text_config, dtype, name="text_encoder")(
          batch["text_ids"], mask, batch.get("text_segment"), train=train)
    else:
      features = batch["text_features"]
      mask = batch.get("text_mask")
      if mask is None:
        # Releases zero-pad precomputed features, so an all-zero step is padding.
        mask = jnp.any(features != 0, axis=-1)
      states = TextFeatureEncoder(cfg.text_projection_dim, cfg.text_dropout, dtype,
                                  name="text_encoder")(features, train=train)
    if self.freeze_text:
      states = jax.lax.stop_gradient(states)
    mask = mask > 0
    lengths = sequence.clip_lengths(jnp.sum(mask, axis=1), states.shape[1])
    if self.text_pooling == "cls":
      x_t = states[:, 0]
    else:
      x_t = sequence.masked_mean(states, mask)
    return x_t, states, lengths

  @nn.compact
  def __call__(self, batch: Mapping[str, Array], train: bool = False) -> dict[str, Any]:
    """Runs every enabled task on a batch.

    Args:
      batch: the fields of docs/interfaces.md ("Batches"): text_ids,
        text_mask, text_segment (or text_features), audio, audio_lengths,
        vision and vision_lengths. The optional `index` keys each sample's
        bottleneck noise and defaults to the row number.
      train: enables dropout (rng stream 'dropout') and bottleneck sampling
        (rng stream 'sample').

    Returns:
      A dict, every array float32:
        predictions: {c: [B]} for m, and t, a, v (unimodal_tasks) and the
          enabled cross tasks among mt, ma, mv.
        features: {c: [B, d_c]} with the same keys: F'_m, H_s, h_c.
        kl: {c: [B]} for m (multimodal_bottleneck) and t, a, v
          (unimodal_bottleneck). Absent when both are off.
        discriminator_logits, discriminator_targets: [P, L, 2, B] over the
          active pairs in PAIRS order (discriminator).
        mi: {"ta", "tv"} -> {"mean", "logvar", "target"} each [B, d_y]
          (mutual_information), plus "entropy_features" [B, max(d_y // 4, 1)]
          when mi_entropy is set.
    """
    cfg = self.config
    check_model_config(cfg)
    if self.text_pooling not in TEXT_POOLINGS:
      raise ValueError(
          f"config.text_encoder.pooling={self.text_pooling!r}; expected one of {TEXT_POOLINGS}.")
    dtype = _DTYPES[cfg.dtype]
    _check_batch(batch, self.feature_dims, self.text_config is not None)
    batch_size = batch["audio"].shape[0]
    sample_ids = batch.get("index")
    if sample_ids is None:
      sample_ids = jnp.arange(batch_size)

    # Shared low-level encoders.
    x_t, text_states, text_lengths = self._encode_text(batch, train, dtype)
    x_a, audio_states = sequence.LSTMEncoder(
        cfg.audio_lstm_hidden, cfg.audio_out, cfg.audio_dropout, dtype,
        name="audio_encoder")(batch["audio"], batch["audio_lengths"], train=train)
    x_v, vision_states = sequence.LSTMEncoder(
        cfg.vision_lstm_hidden, cfg.vision_out, cfg.vision_dropout, dtype,
        name="vision_encoder")(batch["vision"], batch["vision_lengths"], train=train)
    vectors = {"t": x_t, "a": x_a, "v": x_v}

    predictions, features, kl = {}, {}, {}

    # Multimodal task: F'_m, z_m, y_m.
    features["m"], predictions["m"], kl_m = TaskHead(
        cfg.fusion_dim, cfg.post_dropout, cfg.multimodal_bottleneck,
        cfg.latent_dim, cfg.min_sigma, dtype, name="multimodal")(
            jnp.concatenate([x_t, x_a.astype(x_t.dtype), x_v.astype(x_t.dtype)], axis=-1),
            sample_ids, train=train)
    if kl_m is not None:
      kl["m"] = kl_m

    # Unimodal tasks: H_s, z_s, y_s.
    if cfg.unimodal_tasks:
      post_dims = {"t": cfg.text_post_dim, "a": cfg.audio_post_dim, "v": cfg.vision_post_dim}
      for s in MODALITIES:
        features[s], predictions[s], kl_s = TaskHead(
            post_dims[s], cfg.post_dropout, cfg.unimodal_bottleneck,
            cfg.latent_dim, cfg.min_sigma, dtype, name=f"unimodal_{s}")(
                vectors[s], sample_ids, train=train)
        if kl_s is not None:
          kl[s] = kl_s

    outputs: dict[str, Any] = {}

    # Cross-modal task: M_s, gated pairs, modality-dominated fusions.
    cross_tasks = parse_cross_tasks(cfg.cross_tasks)
    pairs = active_pairs(cross_tasks)
    if pairs:
      cross = cfg.cross
      raw = {
          "t": (text_states, text_lengths),
          "a": (audio_states, batch["audio_lengths"]),
          "v": (vision_states, batch["vision_lengths"]),
      }
      m_seq, m_len = {}, {}
      for s in MODALITIES:
        if any(s in pair for pair in pairs):
          x, lengths = fit_length(*raw[s], cross.length)
          m_len[s] = lengths
          m_seq[s] = sequence.SequenceEncoder(cross.dim, dtype, name=f"sequence_{s}")(x, lengths)
      first = jnp.stack([m_seq[pair[0]] for pair in pairs])
      second = jnp.stack([m_seq[pair[1]] for pair in pairs])
      first_lengths = jnp.stack([m_len[pair[0]] for pair in pairs])
      second_lengths = jnp.stack([m_len[pair[1]] for pair in pairs])
      heads, summaries = gated_transformer.PairStack(
          cross.dim, cross.num_layers, cross.num_heads, cross.ffn_dim,
          cross.dropout, cross.first_layer_summary, dtype, name="pairs")(
              first, second, first_lengths, second_lengths, train)
      pair_heads = {pair: heads[i] for i, pair in enumerate(pairs)}
      if cfg.discriminator:
        logits, targets = gated_transformer.DiscriminatorStack(
            cross.dim, cross.num_layers, dtype, name="discriminators")(summaries)
        outputs["discriminator_logits"] = logits.astype(bottleneck.output_dtype(dtype))
        outputs["discriminator_targets"] = targets
      for task in cross_tasks:
        h_p = jnp.concatenate([pair_heads[p] for p in CROSS_TASKS[task]], axis=-1)
        features[task], predictions[task] = CrossHead(
            cross.head_dim, cross.dropout, dtype, name=f"cross_{task}")(h_p, train=train)

    # Mutual-information bound inputs: q(y|x) with x = X_t, y = X_a or X_v.
    if cfg.mutual_information:
      outputs["mi"] = {}
      for pair in MI_PAIRS:
        target = vectors[pair[1]]
        entropy_dim = max(target.shape[-1] // 4, 1) if self.mi_entropy else 0
        outputs["mi"][pair] = MutualInformationHead(
            cfg.mi_hidden, entropy_dim, dtype, name=f"mi_{pair}")(x_t, target)

    outputs["predictions"] = predictions
    out_dtype = bottleneck.output_dtype(dtype)
    outputs["features"] = jax.tree.map(lambda f: f.astype(out_dtype), features)
    if kl:
      outputs["kl"] = kl
    return outputs


def text_config_for(config: ml_collections.ConfigDict,
                    feature_dims: Mapping[str, int]) -> bert.BertConfig | None:
  """Returns the BERT config the run needs: None for precomputed text features,
  the checkpoint's config.json when config.text_encoder.checkpoint is set,
  else config.text_encoder.random_init."""
  if "text_features" in feature_dims:
    return None
  if config.text_encoder.checkpoint:
    return bert.read_config(config.text_encoder.checkpoint)
  return bert.config_from_random_init(config.text_encoder.random_init)


def build_model(config: ml_collections.ConfigDict, feature_dims: Mapping[str, int]) -> MCER:
  """Builds MCER from the run config and the data's feature sizes.

  Args:
    config: the whole run config (reads `model` and `text_encoder`).
    feature_dims: `DataInfo.feature_dims`: {"audio": d_a, "vision": d_v,
      "text": d_t}, where "text" is None (or absent) when batches carry token
      ids and d_t when they carry precomputed `text_features`. The key
      "text_features" is accepted in place of "text".

  Returns:
    The MCER module (parameters come from `init_params`).
  """
  for key in ("audio", "vision"):
    if feature_dims.get(key) is None:
      raise ValueError(f"feature_dims has no {key!r} size; found {dict(feature_dims)}.")
  check_model_config(config.model)
  dims = {"audio": int(feature_dims["audio"]), "vision": int(feature_dims["vision"])}
  text_dim = feature_dims.get("text_features", feature_dims.get("text"))
  if text_dim is not None:
    dims["text_features"] = int(text_dim)
  return MCER(
      config=ml_collections.FrozenConfigDict(config.model),
      text_config=text_config_for(config, dims),
      feature_dims=flax.core.FrozenDict(dims),
      text_pooling=config.text_encoder.get("pooling", "cls"),
      mi_entropy=bool(config.loss.get("mi_entropy", False)),
      freeze_text=not config.text_encoder.finetune,
  )


def init_params(model: MCER, rng: Array, example_batch: Mapping[str, Any],
                config: ml_collections.ConfigDict, load_pretrained: bool = True) -> dict[str, Any]:
  """Initialises the parameters, with pretrained BERT weights when configured.

  Args:
    model: from `build_model`.
    rng: PRNG key for the random initialisation.
    example_batch: one batch without a device axis (only shapes matter).
    config: the run config; `config.text_encoder.checkpoint` names the BERT
      folder whose weights replace the random `text_encoder` subtree.
    load_pretrained: False skips reading the checkpoint (shapes only, for
      example when restoring a trained model).

  Returns:
    The `params` collection: float32, or float64 when config.model.dtype is
    "float64".
  """
  batch = {key: jnp.asarray(value) for key, value in example_batch.items()
           if hasattr(value, "shape")}
  checkpoint = config.text_encoder.checkpoint
  use_checkpoint = bool(load_pretrained and checkpoint and model.text_config is not None)

  def random_init(rng: Array, batch: Mapping[str, Array]) -> dict[str, Any]:
    params = dict(model.init({"params": rng}, batch, train=False)["params"])
    if use_checkpoint:
      # The checkpoint replaces BERT, so leaving it out of the jitted result
      # lets XLA skip its random initialisation.
      del params["text_encoder"]
    return params

  params = jax.jit(random_init)(rng, batch)
  if not use_checkpoint:
    return _cast_params(params, config.model.dtype)
  loaded_config, loaded = bert.load_pretrained(checkpoint)
  if loaded_config != model.text_config:
    raise ValueError(
        f"{checkpoint}: config.json gives {loaded_config}, but the model was "
        f"built with {model.text_config}; build the model from the same checkpoint.")
  expected = jax.eval_shape(
      lambda: model.init({"params": rng}, batch, train=False))["params"]["text_encoder"]
  expected_shapes = jax.tree.map(lambda x: x.shape, expected)
  loaded_shapes = jax.tree.map(lambda x: x.shape, loaded)
  if expected_shapes != loaded_shapes:
    raise ValueError(
        f"{checkpoint}: the loaded BERT parameter tree does not match the "
        "model's text_encoder; the weight mapping in mcer_jax/models/bert.py "
        "and BertEncoder disagree.")
  params["text_encoder"] = jax.tree.map(jnp.asarray, loaded)
  return _cast_params(params, config.model.dtype)


def _cast_params(params: dict[str, Any], dtype: str) -> dict[str, Any]:
  """Casts the parameters to float64 in float64 runs; float32 and bfloat16 runs keep them float32."""
  if dtype != "float64":
    return params
  return jax.tree.map(lambda p: p.astype(jnp.float64), params)
