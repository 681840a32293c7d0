"""Converts a Hugging Face BERT folder's `pytorch_model.bin` to `model.safetensors`.

The project reads only safetensors, so PyTorch is needed once, here, and
never at training time. Run it in an environment that has torch:

  python tools/convert_checkpoint.py /path/to/bert-base-uncased

The tensors keep their names and dtypes. An existing `model.safetensors` is
left alone unless `--overwrite` is given.
"""

import argparse
import os
import sys

import numpy as np

BIN_FILE = "pytorch_model.bin"
SAFETENSORS_FILE = "model.safetensors"


def convert(folder: str, overwrite: bool = False) -> str:
  """Writes FOLDER/model.safetensors from FOLDER/pytorch_model.bin.

  Returns:
    The path written.

  Raises:
    SystemExit: PyTorch is missing, the input is missing or contains no
      tensors, or the output exists and `overwrite` is False.
  """
  source = os.path.join(folder, BIN_FILE)
  target = os.path.join(folder, SAFETENSORS_FILE)
  if not os.path.isfile(source):
    raise SystemExit(f"{source} not found; pass the folder that contains {BIN_FILE}.")
  if os.path.exists(target) and not overwrite:
    raise SystemExit(f"{target} already exists; pass --overwrite to replace it.")
  try:
    import torch
  except ImportError:
    raise SystemExit(
        "PyTorch is not installed in this environment. Install the CPU build in a "
        "separate virtualenv (pip install torch safetensors numpy) and run this tool "
        "there; training itself needs no PyTorch.") from None
  from safetensors.numpy import save_file

  state = torch.load(source, map_location="cpu", weights_only=True)
  if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
    state = state["state_dict"]
  tensors = {}
  for name, value in state.items():
    if not isinstance(value, torch.Tensor):
      continue
    if value.dtype == torch.bfloat16:
      # numpy has no bfloat16, and float32 represents every bfloat16 value exactly.
      value = value.float()
    tensors[name] = np.ascontiguousarray(value.detach().cpu().numpy())
  if not tensors:
    raise SystemExit(f"{source} contains no tensors; expected a model state dict.")
  save_file(tensors, target, metadata={"format": "pt"})
  return target


def main() -> None:
  """Parses the command line and converts one folder."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("folder", help=f"Hugging Face folder containing {BIN_FILE}.")
  parser.add_argument("--overwrite", action="store_true", help=f"Replace an existing {SAFETENSORS_FILE}.")
  args = parser.parse_args()
  target = convert(os.path.expanduser(args.folder), args.overwrite)
  print(f"wrote {target}")


if __name__ == "__main__":
  sys.exit(main())
