"""Self-MM (Yu et al., AAAI 2021): the multimodal and unimodal tasks only.

No cross-modal task, no bottlenecks, no discriminator, no mutual information,
with the learning rates of MMSA's Self-MM MOSI settings.

Run:
  python -m mcer_jax.main --config experiments/self_mm.py --workdir runs/self_mm \
    --config.data.manual_dir=/path/to/MOSI \
    --config.text_encoder.checkpoint=/path/to/bert-base-uncased
"""

from mcer_jax import config as base


def get_config():
  """Returns the Self-MM config."""
  config = base.get_base_config()
  config.data.name = "mosi"
  config.model.cross_tasks = ""
  config.model.multimodal_bottleneck = False
  config.model.unimodal_bottleneck = False
  config.model.discriminator = False
  config.model.mutual_information = False
  config.loss.alpha = 0.0
  config.loss.beta = 0.0
  config.loss.gamma = 0.0
  config.loss.eta = 0.0
  config.optim.lr_bert = 5e-5
  config.optim.lr_audio = 5e-3
  config.optim.lr_vision = 5e-3
  config.optim.lr_other = 1e-3
  config.train.batch_size = 32
  config.lock()
  return config
