#!/usr/bin/env python3
"""Create the virtual environment with CPU PyTorch and MMSA for `mmsa_peer.py`.

`tools/benchmark.py` imports this file as `mmsa_env` (both live in `tools/`),
calls `ensure_mmsa_env()` and runs `tools/mmsa_peer.py` with the returned
Python in a subprocess. From a shell:

  python tools/mmsa_env.py [--venv DIR]   # prints DIR/bin/python

Install commands, in the order `ensure_mmsa_env` runs them (DIR defaults to
~/.cache/mcer_jax/mmsa-venv):

  python3 -m venv DIR
  DIR/bin/python -m pip install --dry-run --report REPORT.json torch==2.13.0
  DIR/bin/python -m pip install torch==2.13.0
  DIR/bin/python -m pip install --dry-run --report REPORT.json <REQUIREMENTS>
  DIR/bin/python -m pip install <REQUIREMENTS>

where <REQUIREMENTS> is the `REQUIREMENTS` list below, torch==2.13.0 included
so that pip keeps the installed build. Each dry run is checked before the
install. When pip would install a CUDA build of torch or any NVIDIA CUDA
library, nothing is installed, and the `MmsaEnvError` message explains how to
offer pip a CPU wheel. `pip install torch==2.13.0` resolves to the CPU wheel only where pip
can see one, for example through a find-links folder holding
torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl or PyTorch's CPU wheel
index; pass such options as `pip_args`. That wheel needs Python 3.11.

The environment is reused when its marker file lists the same requirements
and its Python imports torch, MMSA and transformers at the pinned versions;
otherwise the missing steps run again.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

DEFAULT_VENV = pathlib.Path("~/.cache/mcer_jax/mmsa-venv")

TORCH_REQUIREMENT = "torch==2.13.0"

# Versions checked together with tools/mmsa_peer.py on Python 3.11 (x86-64
# Linux, torch 2.13.0+cpu). MMSA 2.2.1 declares only lower bounds, so the
# libraries it imports are pinned as well.
REQUIREMENTS = (
    TORCH_REQUIREMENT,
    "MMSA==2.2.1",
    "transformers==5.25.0",
    "tokenizers==0.23.3",
    "huggingface_hub==2.4.0",
    "safetensors==0.8.0",
    "numpy==2.4.6",
    "pandas==3.1.1",
    "scikit-learn==1.9.1",
    "scipy==1.17.1",
    "tqdm==4.70.1",
    "easydict==1.14",
    "nvidia-ml-py3==7.352.0",
)

# Package versions the finished environment must import.
EXPECTED_VERSIONS = {"torch": "2.13.0", "MMSA": "2.2.1",
                     "transformers": "5.25.0"}

MARKER_NAME = "mcer_mmsa_env.json"

# NVIDIA's Python bindings to its management library (imported by MMSA's
# utilities) contain no CUDA code and are allowed.
_ALLOWED_NVIDIA = frozenset({"nvidia-ml-py3", "nvidia-ml-py"})

_VERSION_PROBE = """
import importlib.metadata, json, torch
import MMSA, transformers
print(json.dumps({
    "torch": torch.__version__,
    "torch_cuda": torch.version.cuda,
    "MMSA": importlib.metadata.version("MMSA"),
    "transformers": transformers.__version__,
}))
"""


class MmsaEnvError(RuntimeError):
  """The MMSA environment could not be created or failed its check."""


def _progress(message: str) -> None:
  print(f"mmsa_env: {message}", file=sys.stderr, flush=True)


def _normalize(name: str) -> str:
  return name.lower().replace("_", "-").replace(".", "-")


def find_cuda_packages(report: Mapping[str, Any]) -> list[str]:
  """Lists the CUDA builds and libraries a `pip install --report` would install.

  Args:
    report: pip's installation report (JSON, format version 1).

  Returns:
    "name==version" of every package to be installed that is a CUDA build of
    torch (local version +cu...), triton, or an NVIDIA CUDA library. NVIDIA
    packages are nvidia-*, except the management-library bindings
    nvidia-ml-py3 and nvidia-ml-py. The list is empty for a CPU-only install.
  """
  found = []
  for item in report.get("install", []):
    metadata = item.get("metadata", {})
    name = _normalize(metadata.get("name", ""))
    version = metadata.get("version", "")
    is_cuda_torch = name == "torch" and "+cu" in version
    is_cuda_library = (name.startswith("nvidia-")
                       and name not in _ALLOWED_NVIDIA)
    if is_cuda_torch or is_cuda_library or name == "triton":
      found.append(f"{name}=={version}")
  return found


def _run(command: Sequence[str]) -> None:
  result = subprocess.run(list(command), check=False)
  if result.returncode != 0:
    raise MmsaEnvError(f"command failed with exit status {result.returncode}: "
                       f"{' '.join(command)}")


def _pip_install(python: pathlib.Path, requirements: Sequence[str],
                 pip_args: Sequence[str]) -> None:
  """Installs `requirements` after a dry run shows no CUDA package."""
  base = [str(python), "-m", "pip", "install", "--quiet", *pip_args]
  with tempfile.TemporaryDirectory(prefix="mmsa_env_") as tmp:
    report_path = pathlib.Path(tmp) / "report.json"
    _run(base + ["--dry-run", "--report", str(report_path), *requirements])
    report = json.loads(report_path.read_text())
  cuda = find_cuda_packages(report)
  if cuda:
    raise MmsaEnvError(
        f"pip would install CUDA packages {cuda} for {list(requirements)}; "
        "nothing was installed. Offer pip the CPU build of "
        f"{TORCH_REQUIREMENT} (a find-links folder with the +cpu wheel or "
        "PyTorch's CPU wheel index) through pip_args or pip's configuration, "
        "and use Python 3.11 if the CPU wheel is cp311")
  _run(base + list(requirements))


def _installed_versions(python: pathlib.Path) -> dict[str, Any] | None:
  """Returns the environment's package versions, or None if an import fails."""
  result = subprocess.run([str(python), "-c", _VERSION_PROBE],
                          capture_output=True, text=True, check=False)
  if result.returncode != 0:
    return None
  return json.loads(result.stdout.strip().splitlines()[-1])


def _version_problems(versions: Mapping[str, Any]) -> list[str]:
  problems = []
  for package, expected in EXPECTED_VERSIONS.items():
    found = str(versions.get(package, ""))
    # Torch's local version label (+cpu) is not part of the pin.
    if found.split("+")[0] != expected:
      problems.append(f"{package} {found or 'missing'} (expected {expected})")
  if versions.get("torch_cuda") is not None:
    problems.append(f"torch is built with CUDA {versions['torch_cuda']} "
                    "(expected a CPU build)")
  return problems


def venv_python(venv: str | os.PathLike[str] | None = None) -> pathlib.Path:
  """Returns the path of the Python inside the environment folder `venv`."""
  folder = pathlib.Path(venv if venv is not None else DEFAULT_VENV).expanduser()
  return folder / "bin" / "python"


def ensure_mmsa_env(venv: str | os.PathLike[str] | None = None,
                    python: str | None = None,
                    pip_args: Sequence[str] = ()) -> pathlib.Path:
  """Creates or reuses the MMSA environment and returns its Python.

  Args:
    venv: environment folder; default ~/.cache/mcer_jax/mmsa-venv.
    python: interpreter that creates the environment; default the running one.
      The local torch 2.13.0 CPU wheel needs Python 3.11.
    pip_args: extra options for every `pip install`, e.g. ("--find-links",
      "/path/to/wheels").

  Returns:
    Path of the environment's Python, ready to run tools/mmsa_peer.py.

  Raises:
    MmsaEnvError: a command failed, pip would install CUDA packages, or the
      finished environment imports other versions than the pinned ones.
  """
  folder = pathlib.Path(venv if venv is not None else DEFAULT_VENV).expanduser()
  env_python = venv_python(folder)
  marker = folder / MARKER_NAME
  expected_marker = {"requirements": list(REQUIREMENTS)}

  if env_python.exists() and marker.exists():
    recorded = json.loads(marker.read_text())
    versions = _installed_versions(env_python)
    if (recorded == expected_marker and versions is not None
        and not _version_problems(versions)):
      _progress(f"reusing {folder} (torch {versions['torch']}, MMSA "
                f"{versions['MMSA']}, transformers {versions['transformers']})")
      return env_python
    _progress(f"{folder} differs from the pinned requirements; updating it")

  if not env_python.exists():
    _progress(f"creating virtual environment {folder}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    _run([python or sys.executable, "-m", "venv", str(folder)])

  _progress(f"installing {TORCH_REQUIREMENT} (CPU build)")
  _pip_install(env_python, [TORCH_REQUIREMENT], pip_args)
  _progress("installing MMSA and the pinned libraries")
  _pip_install(env_python, REQUIREMENTS, pip_args)

  versions = _installed_versions(env_python)
  if versions is None:
    raise MmsaEnvError(f"{env_python} cannot import torch, MMSA and "
                       "transformers after the install; rerun with a clean "
                       f"folder (delete {folder})")
  problems = _version_problems(versions)
  if problems:
    raise MmsaEnvError(f"{folder} has {', '.join(problems)}; delete the "
                       "folder and rerun")
  marker.write_text(json.dumps(expected_marker, indent=1) + "\n")
  _progress(f"ready: {env_python} (torch {versions['torch']}, MMSA "
            f"{versions['MMSA']}, transformers {versions['transformers']})")
  return env_python


def main(argv: Sequence[str] | None = None) -> None:
  """Creates or reuses the environment and prints its Python's path."""
  parser = argparse.ArgumentParser(
      description="Create (or reuse) the virtual environment with CPU PyTorch "
      "and MMSA that tools/mmsa_peer.py runs in; prints its Python. "
      "Options it does not know go to every pip install.")
  parser.add_argument("--venv", default=str(DEFAULT_VENV),
                      help="environment folder (default: %(default)s)")
  parser.add_argument("--python", default=None,
                      help="interpreter that creates the environment "
                      "(default: the one running this script)")
  args, pip_args = parser.parse_known_args(argv)
  try:
    env_python = ensure_mmsa_env(args.venv, args.python, pip_args)
  except MmsaEnvError as error:
    sys.exit(f"mmsa_env: {error}")
  print(env_python)


if __name__ == "__main__":
  main()
