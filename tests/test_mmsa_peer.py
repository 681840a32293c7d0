"""Tests for the MMSA benchmark peer (tools/mmsa_peer.py, tools/mmsa_env.py)."""

import importlib.util
import io
import json
import os
import pathlib
import pickle
import subprocess
import sys
import types

import numpy as np
import pytest

TOOLS = pathlib.Path(__file__).resolve().parents[1] / "tools"


def _load_tool(name: str) -> types.ModuleType:
  spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


mmsa_peer = _load_tool("mmsa_peer")
mmsa_env = _load_tool("mmsa_env")


def _split(num_samples: int, length: int = 6) -> dict[str, object]:
  rng = np.random.default_rng(num_samples)
  return {
      "id": np.array([f"v$_${i}" for i in range(num_samples)]),
      "raw_text": np.array(["a b"] * num_samples),
      "text_bert": rng.integers(0, 5, (num_samples, 3, length)).astype(
          np.float32),
      "audio": rng.normal(size=(num_samples, 4, 2)).astype(np.float32),
      "vision": rng.normal(size=(num_samples, 4, 3)).astype(np.float32),
      "audio_lengths": [4] * num_samples,
      "vision_lengths": [1] * num_samples,
      "regression_labels": rng.uniform(-3, 3, num_samples).astype(np.float32),
  }


def _mmsa_data() -> dict[str, dict[str, object]]:
  return {"train": _split(5), "valid": _split(2), "test": _split(3)}


def _pickled(obj: object) -> io.BytesIO:
  return io.BytesIO(pickle.dumps(obj, protocol=4))


class _RunsCode:

  def __reduce__(self):
    return (os.system, ("true",))


def test_restricted_load_round_trip():
  data = _mmsa_data()
  loaded = mmsa_peer.restricted_load(_pickled(data))
  np.testing.assert_array_equal(loaded["train"]["audio"],
                                data["train"]["audio"])
  np.testing.assert_array_equal(loaded["test"]["text_bert"],
                                data["test"]["text_bert"])
  assert loaded["valid"]["vision_lengths"] == [1, 1]


def test_restricted_load_numpy_scalars():
  data = _mmsa_data()
  data["train"]["audio_lengths"] = [np.int64(3)] * 5
  loaded = mmsa_peer.restricted_load(_pickled(data))
  assert loaded["train"]["audio_lengths"] == [3] * 5


def test_restricted_load_rejects_code():
  data = _mmsa_data()
  data["train"]["id"] = _RunsCode()
  file = _pickled(data)
  file.name = "bad.pkl"
  with pytest.raises(mmsa_peer.InvalidInputError,
                     match=r"bad.pkl: the file references (posix|os)\.system"):
    mmsa_peer.restricted_load(file)


def test_check_rejects_missing_split():
  data = _mmsa_data()
  del data["valid"]
  with pytest.raises(ValueError, match="split 'valid' is missing"):
    mmsa_peer.check_mmsa_data(data, "x.pkl")


def test_check_rejects_missing_field():
  data = _mmsa_data()
  del data["test"]["audio_lengths"]
  with pytest.raises(ValueError, match=r"x.pkl: split 'test' lacks fields "
                     r"\['audio_lengths'\]"):
    mmsa_peer.check_mmsa_data(data, "x.pkl")


def test_check_rejects_text_shape():
  data = _mmsa_data()
  data["train"]["text_bert"] = np.zeros((5, 2, 6), np.float32)
  with pytest.raises(ValueError,
                     match=r"'train/text_bert' must be an array \[N, 3, T\]"):
    mmsa_peer.check_mmsa_data(data, "x.pkl")


def test_check_rejects_row_count():
  data = _mmsa_data()
  data["train"]["regression_labels"] = np.zeros(4, np.float32)
  with pytest.raises(ValueError, match="'train/regression_labels' has 4 rows"):
    mmsa_peer.check_mmsa_data(data, "x.pkl")


@pytest.mark.parametrize("bad_length", [0, 5])
def test_check_rejects_frame_lengths(bad_length):
  data = _mmsa_data()
  data["valid"]["audio_lengths"] = [2, bad_length]
  with pytest.raises(ValueError, match=r"'valid/audio_lengths' has values "
                     rf"\[{bad_length}\] outside \[1, 4\]"):
    mmsa_peer.check_mmsa_data(data, "x.pkl")


def test_real_mmsa_file_loads(mosi_real):
  with open(mosi_real / "mmsa" / "unaligned_50.pkl", "rb") as file:
    data = mmsa_peer.restricted_load(file)
  assert data["train"]["text_bert"].shape == (114, 3, 50)
  assert data["valid"]["audio"].shape == (11, 50, 74)
  assert data["test"]["vision"].shape == (25, 50, 47)


def test_check_rejects_audio_list():
  data = _mmsa_data()
  data["test"]["audio"] = data["test"]["audio"].tolist()
  with pytest.raises(ValueError, match=r"'test/audio' must be an array "
                     r"\[N, T, d\], found list"):
    mmsa_peer.check_mmsa_data(data, "x.pkl")


def test_fit_text_length_cuts():
  text = np.arange(2 * 3 * 6, dtype=np.float32).reshape(2, 3, 6)
  fitted = mmsa_peer.fit_text_length(text, 4)
  assert fitted.shape == (2, 3, 4)
  assert fitted.dtype == np.float32
  # Row 1, channel 2 starts at 1 * 18 + 2 * 6 = 30.
  assert fitted[1, 2].tolist() == [30.0, 31.0, 32.0, 33.0]


def test_fit_text_length_pads():
  text = np.arange(1 * 3 * 2, dtype=np.float32).reshape(1, 3, 2) + 1
  fitted = mmsa_peer.fit_text_length(text, 5)
  assert fitted.shape == (1, 3, 5)
  assert fitted[0].tolist() == [[1, 2, 0, 0, 0], [3, 4, 0, 0, 0],
                                [5, 6, 0, 0, 0]]


def _report(*packages: tuple[str, str]) -> dict[str, object]:
  return {"version": "1", "install": [
      {"metadata": {"name": name, "version": version}}
      for name, version in packages]}


def test_cpu_install_has_no_cuda():
  report = _report(("torch", "2.13.0+cpu"), ("nvidia-ml-py3", "7.352.0"),
                   ("MMSA", "2.2.1"), ("numpy", "2.4.6"))
  assert mmsa_env.find_cuda_packages(report) == []


def test_cuda_install_is_listed():
  report = _report(("torch", "2.12.0"), ("nvidia-cudnn-cu13", "9.20.0.48"),
                   ("triton", "3.7.0"), ("nvidia_cublas", "13.1.1.3"),
                   ("sympy", "1.14.0"))
  assert mmsa_env.find_cuda_packages(report) == [
      "nvidia-cudnn-cu13==9.20.0.48", "triton==3.7.0",
      "nvidia-cublas==13.1.1.3"]


def test_cuda_torch_build_is_listed():
  report = _report(("torch", "2.13.0+cu128"))
  assert mmsa_env.find_cuda_packages(report) == ["torch==2.13.0+cu128"]


def test_peer_trains_in_mmsa_env(mosi_real, minilm):
  python = mmsa_env.venv_python()
  if not python.exists():
    pytest.skip(f"{python} is missing; `python tools/mmsa_env.py` creates it")
  command = [str(python), str(TOOLS / "mmsa_peer.py"),
             "--data", str(mosi_real / "mmsa" / "unaligned_50.pkl"),
             "--pretrained", str(minilm), "--batch_size", "4",
             "--seq_len", "16", "--steps", "2", "--warmup_steps", "1",
             "--update_epochs", "1"]
  result = subprocess.run(command, capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 1, result.stdout
  measured = json.loads(lines[0])
  assert measured["steps"] == 2
  assert measured["batch_size"] == 4
  assert measured["seq_len"] == 16
  assert measured["text_out"] == 384
  assert measured["train_samples"] == 114
  assert measured["update_epochs"] == 1
  assert measured["mmsa_version"] == "2.2.1"
  assert measured["samples_per_s"] > 0
  assert measured["peak_rss_mb"] > 0
  # Epoch 2 moved the text labels away from the human labels.
  assert measured["label_shift"] > 0


def test_peer_reports_invalid_data(tmp_path, minilm):
  python = mmsa_env.venv_python()
  if not python.exists():
    pytest.skip(f"{python} is missing; `python tools/mmsa_env.py` creates it")
  data = _mmsa_data()
  del data["train"]["vision_lengths"]
  path = tmp_path / "broken.pkl"
  path.write_bytes(pickle.dumps(data))
  result = subprocess.run(
      [str(python), str(TOOLS / "mmsa_peer.py"), "--data", str(path),
       "--pretrained", str(minilm)],
      capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 1
  assert result.stdout == ""
  assert (f"mmsa_peer: {path}: split 'train' lacks fields ['vision_lengths']"
          in result.stderr)


def test_peer_rejects_missing_data(tmp_path):
  result = subprocess.run(
      [sys.executable, str(TOOLS / "mmsa_peer.py"), "--data",
       str(tmp_path / "absent.pkl"), "--pretrained", str(tmp_path)],
      capture_output=True, text=True, timeout=60, check=False)
  assert result.returncode == 2
  assert "absent.pkl: file not found" in result.stderr


def test_peer_rejects_non_bert_folder(tmp_path):
  data = tmp_path / "data.pkl"
  data.write_bytes(pickle.dumps(_mmsa_data()))
  result = subprocess.run(
      [sys.executable, str(TOOLS / "mmsa_peer.py"), "--data", str(data),
       "--pretrained", str(tmp_path)],
      capture_output=True, text=True, timeout=60, check=False)
  assert result.returncode == 2
  assert "config.json not found" in result.stderr
