"""MCER on CMU-MOSEI with the paper's hyperparameters (Table III).

Run:
  python -m mcer_jax.main --config experiments/mosei.py --workdir runs/mosei \
    --config.data.manual_dir=/path/to/MOSEI \
    --config.text_encoder.checkpoint=/path/to/bert-base-uncased
"""

from mcer_jax import config as base


def get_config():
  """Returns the MOSEI config."""
  config = base.get_base_config()
  config.data.name = "mosei"
  config.data.label_range = 3.0
  config.train.batch_size = 32
  config.optim.lr_bert = 2e-5
  config.optim.lr_audio = 9e-4
  config.optim.lr_vision = 4.5e-3
  config.optim.lr_other = 5.5e-4
  config.loss.alpha = 1.8
  config.loss.beta = 0.45
  config.loss.gamma = 0.3
  config.loss.eta = 0.2
  config.lock()
  return config
