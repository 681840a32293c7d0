r"""Entry point: train, evaluate or predict with MCER.

  python -m mcer_jax.main --config experiments/mosi.py --workdir DIR \
      [--mode train|evaluate|predict] [--split test] [--config.key=value ...]

`train` (the default) trains and resumes in DIR; `evaluate` restores the best
checkpoint of DIR and writes `eval_<split>.json` for the configured data, which
may be another `--config.data.manual_dir` in the same layout; `predict` writes
`predictions_<split>.csv`.
"""

import logging as std_logging
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "evaluate", "predict"], "What to do.")
_SPLIT = flags.DEFINE_string("split", "test", "Split for --mode=evaluate or --mode=predict.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.use_python_logging()
  std_logging.basicConfig(level=std_logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True)
  # Orbax reports every file it writes at INFO through absl's logger.
  std_logging.getLogger("absl").setLevel(std_logging.WARNING)
  # JAX logs at INFO each platform it probes but does not find, such as 'tpu' on a GPU or CPU machine.
  std_logging.getLogger("jax._src.xla_bridge").setLevel(std_logging.WARNING)
  config = _CONFIG.value
  if config.model.dtype == "float64":
    import jax

    jax.config.update("jax_enable_x64", True)

  from mcer_jax import distributed

  distributed.initialize(config.distributed)

  from mcer_jax import train
  from mcer_jax import inference

  try:
    if _MODE.value == "train":
      train.train_and_evaluate(config, _WORKDIR.value)
    elif _MODE.value == "evaluate":
      inference.evaluate_workdir(config, _WORKDIR.value, _SPLIT.value)
    else:
      inference.predict_workdir(config, _WORKDIR.value, _SPLIT.value)
  except train.Preempted as stop:
    logging.warning("%s", stop)
    sys.exit(143)


def _parse_flags(argv: list[str]) -> list[str]:
  """Parses the flags like absl, but reports a misspelt config key in one line."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as error:
    # ml_collections raises these for a key the config does not have, with a
    # message naming the key and the closest existing one.
    message = error.args[0] if error.args else error
    while isinstance(message, BaseException) and message.args:
      message = message.args[0]
    key, *hint = str(message).splitlines() or [""]
    overrides = [arg for arg in argv if arg.startswith("--config.")]
    name = key.strip("'\"")
    if not name or not any(f".{name}" in arg.split("=", 1)[0] for arg in overrides):
      raise  # Not a misspelt override: an error inside the experiment file, for example.
    sentences = [f"Invalid config override: unknown key {key}.", *hint,
                 "Every key is defined in mcer_jax/config.py."]
    sys.exit(" ".join(sentences))
  except flags.Error as error:
    sys.exit(f"Invalid flags: {error}\nPass --helpshort to see the flags.")


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
