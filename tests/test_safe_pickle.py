"""Tests of the restricted unpickler: numpy and builtin containers load, anything else is rejected."""

import os
import pickle
import subprocess

import numpy as np
import pytest

from mcer_jax.data import safe_pickle
from mcer_jax.data.errors import DataError


def _plain_object():
  return {
      "float": np.arange(6, dtype=np.float32).reshape(2, 3),
      "strings": np.asarray(["ab", "c"]),
      "objects": np.asarray(["x", 1, None], dtype=object),
      "fortran": np.asfortranarray(np.arange(4.0).reshape(2, 2)),
      "scalar": np.float32(1.5),
      "int_scalar": np.int64(-3),
      "dtype": np.dtype("f4"),
      "set": {1, 2},
      "frozenset": frozenset({"a"}),
      "bytes": b"\x00\xff",
      "bytearray": bytearray(b"q"),
      "complex": 1 + 2j,
      "list": [1, None, True, 1.5, "s", (2, 3)],
      "lengths": [np.int64(18), np.int64(6)],
  }


def _assert_same(loaded, expected):
  assert set(loaded) == set(expected)
  for key, value in expected.items():
    if isinstance(value, np.ndarray):
      assert loaded[key].dtype == value.dtype, key
      np.testing.assert_array_equal(loaded[key], value, err_msg=key)
    else:
      assert loaded[key] == value, key
      assert type(loaded[key]) is type(value), key


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_load_plain_containers_and_numpy(tmp_path, protocol):
  path = tmp_path / "plain.pkl"
  expected = _plain_object()
  path.write_bytes(pickle.dumps(expected, protocol=protocol))
  _assert_same(safe_pickle.load(path), expected)


@pytest.mark.parametrize("protocol", [0, 2])
def test_load_numpy_1_module_paths(tmp_path, protocol):
  # numpy 1.x writes `numpy.core.multiarray`; numpy 2.x writes `numpy._core.multiarray`.
  # Protocols 0-2 store module names as text lines, so the name can be swapped in place.
  data = pickle.dumps({"a": np.arange(4, dtype=np.float32), "s": np.float64(2.5)}, protocol=protocol)
  assert b"numpy._core.multiarray" in data
  path = tmp_path / "numpy1.pkl"
  path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
  loaded = safe_pickle.load(path)
  np.testing.assert_array_equal(loaded["a"], np.arange(4, dtype=np.float32))
  assert loaded["s"] == 2.5


def test_load_real_misa_file(mosi_real):
  records = safe_pickle.load(mosi_real / "misa" / "dev.pkl")
  assert len(records) == 11
  assert records[0][2] == "X3j2zQgwYgE[0]"


class _Touch:
  """Unpickles to os.system("touch PATH")."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (os.system, (f"touch {self.path}",))


class _Eval:
  def __reduce__(self):
    return (eval, ("1 + 1",))


class _Popen:
  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (subprocess.Popen, (["touch", str(self.path)],))


class _Getattr:
  def __reduce__(self):
    return (getattr, ("text", "upper"))


def test_reject_os_system_and_create_no_file(tmp_path):
  marker = tmp_path / "created_by_pickle"
  path = tmp_path / "evil.pkl"
  data = pickle.dumps({"audio": np.zeros(3), "payload": [_Touch(marker)]})
  path.write_bytes(data)

  with pytest.raises(safe_pickle.UnsafePickleError) as error:
    safe_pickle.load(path)
  assert str(path) in str(error.value)
  assert "system" in str(error.value)
  assert not marker.exists()

  # The same bytes run the command under a plain pickle.load, so the rejection matters.
  pickle.loads(data)
  assert marker.exists()


@pytest.mark.parametrize(
    "payload, global_name",
    [(_Eval(), "builtins.eval"), (_Popen("x"), "subprocess.Popen"), (_Getattr(), "builtins.getattr")],
)
def test_reject_other_globals(tmp_path, payload, global_name):
  path = tmp_path / "evil.pkl"
  path.write_bytes(pickle.dumps({"train": {"id": np.asarray(["a"]), "bad": payload}}))
  with pytest.raises(safe_pickle.UnsafePickleError, match=global_name.replace(".", r"\.")) as error:
    safe_pickle.load(path)
  assert str(path) in str(error.value)


def test_reject_popen_creates_no_file(tmp_path):
  marker = tmp_path / "created_by_popen"
  path = tmp_path / "evil.pkl"
  path.write_bytes(pickle.dumps([_Popen(marker)], protocol=2))
  with pytest.raises(safe_pickle.UnsafePickleError):
    safe_pickle.load(path)
  assert not marker.exists()


def test_empty_file_error_names_file(tmp_path):
  path = tmp_path / "unaligned_50.pkl"
  path.write_bytes(b"")
  with pytest.raises(DataError, match="empty") as error:
    safe_pickle.load(path)
  assert str(path) in str(error.value)


def test_truncated_file_error_names_file(tmp_path, mosi_real):
  data = (mosi_real / "misa" / "dev.pkl").read_bytes()
  path = tmp_path / "dev.pkl"
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(DataError, match="truncated") as error:
    safe_pickle.load(path)
  assert str(path) in str(error.value)


def test_text_file_error_names_file(tmp_path):
  path = tmp_path / "notes.pkl"
  path.write_text("these are not pickled bytes\n")
  with pytest.raises(DataError) as error:
    safe_pickle.load(path)
  assert str(path) in str(error.value)


def test_missing_file_error_names_file(tmp_path):
  path = tmp_path / "absent.pkl"
  with pytest.raises(DataError) as error:
    safe_pickle.load(path)
  assert str(path) in str(error.value)
