"""A tiny MCER on synthetic data that trains on any machine in about two minutes on two CPU cores.

The labels depend on all three modalities and the text encoder is a small,
randomly initialised BERT, so nothing has to be downloaded.

Run:
  python -m mcer_jax.main --config experiments/demo.py --workdir runs/demo
"""

from mcer_jax import config as base


def get_config():
  """Returns the demo config."""
  config = base.get_base_config()
  config.seed = 0
  config.data.name = "synthetic"
  config.data.num_synthetic = 512
  config.data.max_text_len = 16
  config.data.max_audio_len = 16
  config.data.max_vision_len = 16
  config.data.text_buckets = (8, 16)
  config.text_encoder.checkpoint = ""
  config.text_encoder.random_init.vocab_size = 64
  config.text_encoder.random_init.hidden_size = 32
  config.text_encoder.random_init.num_layers = 1
  config.text_encoder.random_init.num_heads = 2
  config.text_encoder.random_init.intermediate_size = 64
  config.model.cross.length = 16
  config.model.cross.num_layers = 1
  # The paper's alpha and beta weigh KL divergences summed over 32 latent
  # dimensions; on 512 samples that collapses the variational encoders
  # (predictions barely vary), so the demo weighs them 32 times less.
  config.loss.alpha = 0.06
  config.loss.beta = 0.00003
  config.optim.lr_bert = 1e-3
  config.optim.lr_audio = 3e-3
  config.optim.lr_vision = 3e-3
  config.optim.lr_other = 2e-3
  config.train.num_epochs = 12
  config.train.batch_size = 32
  config.train.early_stop_patience = 0
  config.lock()
  return config
