"""MCER on CH-SIMS (labels in [-1, 1], with per-modality human labels).

The paper gives no CH-SIMS hyperparameters, so this uses MOSI's learning rates
and loss weights and a Chinese BERT checkpoint.

Run:
  python -m mcer_jax.main --config experiments/sims.py --workdir runs/sims \
    --config.data.manual_dir=/path/to/SIMS \
    --config.text_encoder.checkpoint=/path/to/bert-base-chinese
"""

from mcer_jax import config as base


def get_config():
  """Returns the CH-SIMS config."""
  config = base.get_base_config()
  config.data.name = "sims"
  config.data.label_range = 1.0
  config.data.max_text_len = 39
  config.data.max_audio_len = 400
  config.data.max_vision_len = 55
  config.data.text_buckets = (16, 24, 39)
  config.train.batch_size = 32
  config.lock()
  return config
