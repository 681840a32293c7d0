"""A restricted unpickler for released dataset pickles.

Unpickling calls whatever global a pickle names, so a crafted file can run any
code. `load` admits only the globals that numpy arrays, numpy scalars and
builtin containers need and rejects every other one before calling it. Of the
admitted globals, `bytes` and `bytearray` would allocate a zero-filled buffer of
any size when called with a number, and `_codecs.encode` would load other
codecs, so those calls are rejected too.
"""

import builtins
import codecs
import importlib
import os
import pickle
from typing import Any

from mcer_jax.data.errors import DataError


class UnsafePickleError(DataError):
  """A pickle requested a global outside the allowed set."""


# Globals of builtin types that pickles of plain containers name.
# `_codecs.encode` rebuilds bytes in protocols 0-2 from a latin-1 string.
_BUILTIN_GLOBALS = {
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "list"),
    ("builtins", "dict"),
    ("builtins", "tuple"),
    ("builtins", "str"),
    ("builtins", "bytes"),
    ("builtins", "bytearray"),
    ("builtins", "int"),
    ("builtins", "float"),
    ("builtins", "complex"),
    ("builtins", "bool"),
    ("_codecs", "encode"),
}

# numpy globals by (submodule of numpy's core package, name). numpy 1.x
# pickles name `numpy.core.<submodule>`, numpy 2.x names `numpy._core.<submodule>`.
_NUMPY_CORE_GLOBALS = {
    ("multiarray", "_reconstruct"),  # ndarray.__reduce__
    ("multiarray", "scalar"),  # numpy scalars such as np.float32(1.0)
    ("numeric", "_frombuffer"),  # ndarray in protocol 5
}
_NUMPY_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype")}


def _numpy_core_module(submodule: str) -> Any:
  """Imports numpy's core `submodule` from whichever package this numpy has."""
  try:
    return importlib.import_module(f"numpy._core.{submodule}")
  except ImportError:  # numpy < 2
    return importlib.import_module(f"numpy.core.{submodule}")


def _reject_size_argument(constructor: type, path: str) -> Any:
  """Wraps `bytes` or `bytearray` so that a call with a number (a buffer size) raises."""

  def construct(*args):
    if args and isinstance(args[0], int):
      raise UnsafePickleError(
          f"{path}: the pickle calls {constructor.__name__}({args[0]}), which allocates a buffer of that size; "
          "pickles of real data never do this, so the file was rejected."
      )
    return constructor(*args)

  return construct


def _latin1_encode(path: str) -> Any:
  """Wraps `_codecs.encode` so that only the latin-1 codec that pickles of bytes use is admitted."""

  def encode(text, encoding="utf-8", *args):
    if str(encoding).lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
      raise UnsafePickleError(f"{path}: the pickle calls _codecs.encode with the codec {encoding!r}; only latin-1 is admitted.")
    return codecs.encode(text, encoding, *args)

  return encode


class _RestrictedUnpickler(pickle.Unpickler):
  """An Unpickler whose `find_class` resolves only the allowed globals."""

  def __init__(self, stream, path: str):
    super().__init__(stream, encoding="latin1")
    self._path = path

  def find_class(self, module: str, name: str) -> Any:
    if module == "__builtin__":  # Python 2 name of `builtins`, used by protocols 0-2.
      module = "builtins"
    if (module, name) in (("builtins", "bytes"), ("builtins", "bytearray")):
      return _reject_size_argument(getattr(builtins, name), self._path)
    if (module, name) == ("_codecs", "encode"):
      return _latin1_encode(self._path)
    if (module, name) in _BUILTIN_GLOBALS:
      return getattr(importlib.import_module(module), name)
    if (module, name) in _NUMPY_GLOBALS:
      return getattr(importlib.import_module("numpy"), name)
    for package in ("numpy.core.", "numpy._core."):
      if module.startswith(package):
        submodule = module[len(package):]
        if (submodule, name) in _NUMPY_CORE_GLOBALS:
          return getattr(_numpy_core_module(submodule), name)
    raise UnsafePickleError(
        f"{self._path}: the pickle requests the global '{module}.{name}', which is not "
        "a numpy array, numpy scalar or builtin container. Loading it could run "
        "arbitrary code, so the file was rejected; re-export the data with only "
        "numpy arrays, lists, tuples and dicts."
    )


def load(path: str | os.PathLike) -> Any:
  """Unpickles `path`, admitting only numpy arrays, numpy scalars and builtin containers.

  Args:
    path: the pickle file.

  Returns:
    The unpickled object.

  Raises:
    UnsafePickleError: the pickle names any other global; nothing it names is called.
    DataError: the file is missing, empty, truncated or not a pickle.
  """
  path = os.fspath(path)
  try:
    size = os.path.getsize(path)
  except OSError as error:
    raise DataError(f"{path}: cannot read the file: {error}") from error
  if size == 0:
    raise DataError(f"{path}: the file is empty (0 bytes); expected a pickle. Copy or download it again.")
  with open(path, "rb") as stream:
    try:
      return _RestrictedUnpickler(stream, path).load()
    except UnsafePickleError:
      raise
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError, KeyError) as error:
      raise DataError(
          f"{path}: cannot unpickle the file ({type(error).__name__}: {error}); it is truncated, "
          "corrupted or not a pickle. Copy or download it again."
      ) from error
    except (MemoryError, OverflowError, RecursionError) as error:
      # A damaged length field requests an absurd size, or the nesting is too deep.
      raise DataError(
          f"{path}: cannot unpickle the file ({type(error).__name__}: {error}); a size or nesting depth in it "
          "is out of range, so it is corrupted. Copy or download it again."
      ) from error
