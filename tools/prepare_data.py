r"""Prepares a release as a TFDS dataset (array_record) before training.

  python tools/prepare_data.py --config experiments/mosi.py \
      --config.data.manual_dir=/path/to/MOSI \
      --config.text_encoder.checkpoint=/path/to/bert-base-uncased

The data goes to `config.data.data_dir` (default ~/tensorflow_datasets), in a
subfolder named by the layout and a digest of the reader settings, the source
files and, for MISA and csd files, the text encoder's vocabulary. Training with
the same config reuses it; running this again with unchanged settings does
nothing. In multi-process runs, prepare the data once with this tool first.
"""

import logging as std_logging

from absl import app
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an experiment config file.", lock_config=True)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.use_python_logging()
  std_logging.basicConfig(level=std_logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True)
  config = _CONFIG.value
  if config.data.name == "synthetic":
    raise app.UsageError("synthetic data is generated in memory when training; there is nothing to prepare")

  from mcer_jax import data

  splits, info = data.load_splits(config)
  for split, source in splits.items():
    logging.info("%s: %d samples.", split, len(source))
  logging.info(
      "Feature sizes %s, maximum lengths %s, per-modality labels: %s.",
      info.feature_dims, info.max_lengths, "yes" if info.has_unimodal_labels else "no",
  )


if __name__ == "__main__":
  app.run(main)
