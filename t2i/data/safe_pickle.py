"""Read the originals' Python-2 pickles without running arbitrary code.

The shipped ``filenames.pickle``, ``class_info.pickle`` and ``captions.pickle`` hold lists, dicts, strings and
numbers; ``class_info.pickle`` also holds numpy int64 scalars. ``load`` uses a restricted unpickler:

* Python-2 ``str`` objects are decoded as latin-1 (every byte maps to one character, so nothing can fail);
* plain built-in types need no global at all; the few built-in containers that do (``set``, ``frozenset``,
  ``complex``, ``bytearray``) are allowed;
* numpy is allowed exactly for plain scalars and arrays of numeric dtype: ``numpy.core.multiarray.scalar``,
  ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and ``numpy.dtype`` (and their ``numpy._core``
  spellings); a dtype that is not bool/int/uint/float/complex (e.g. ``object``) is refused;
* ``_codecs.encode(text, "latin1")`` is allowed, as that is how Python 3 writes bytes in protocol 2;
* any other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``, a class...) is refused with an
  ``UnsafePickleError`` naming the file and the global.

``t2i data convert`` turns a data set's pickles into ``metadata.json`` once, so later runs need no pickle.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

__all__ = ["UnsafePickleError", "load", "loads"]


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list (or could not be read)."""

    t2i_user_error = True


_BUILTINS = {"set", "frozenset", "complex", "bytearray"}
_NUMPY_MODULES = {"numpy.core.multiarray", "numpy._core.multiarray"}
_NUMERIC_KINDS = set("biufc")


def _numpy_global(module: str, name: str) -> Any:
    import numpy as np

    if module in _NUMPY_MODULES and name == "scalar":
        return _checked_scalar
    if module in _NUMPY_MODULES and name == "_reconstruct":
        return _checked_reconstruct
    if module == "numpy" and name == "ndarray":
        return np.ndarray
    if module == "numpy" and name == "dtype":
        return _checked_dtype
    return None


def _checked_dtype(*args: Any) -> Any:
    import numpy as np

    dtype = np.dtype(*args)
    if dtype.kind not in _NUMERIC_KINDS:
        raise UnsafePickleError(f"numpy dtype {dtype!r} is not a plain numeric dtype")
    return dtype


def _checked_scalar(dtype: Any, *args: Any) -> Any:
    import numpy as np

    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMERIC_KINDS:
        raise UnsafePickleError(f"numpy scalar of dtype {dtype!r} is not a plain numeric scalar")
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar

    return scalar(dtype, *args)


def _checked_reconstruct(cls: Any, *args: Any) -> Any:
    import numpy as np

    if cls is not np.ndarray:
        raise UnsafePickleError(f"numpy array of class {cls!r} is not a plain ndarray")
    return np.ndarray.__new__(np.ndarray, *args)


def _latin1_encode(text: Any, encoding: str = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in {"latin1", "latin-1"}:
        raise UnsafePickleError(f"_codecs.encode is only allowed as (str, 'latin1'), got encoding {encoding!r}")
    return text.encode("latin-1")


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file, encoding="latin-1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if module in {"builtins", "__builtin__"} and name in _BUILTINS:
            import builtins

            return getattr(builtins, name)
        if module == "_codecs" and name == "encode":
            return _latin1_encode  # Python-3 protocol-2 pickles spell bytes as _codecs.encode(str, "latin1")
        if module == "numpy" or module in _NUMPY_MODULES:
            found = _numpy_global(module, name)
            if found is not None:
                return found
        raise UnsafePickleError(
            f"{self.source}: refusing to load the global '{module}.{name}'. t2i reads legacy pickles with an "
            "allow-list (lists, dicts, strings, numbers, numeric numpy scalars/arrays); this file asks for "
            "something else, so it is either not a data-set pickle or has been tampered with."
        )


def loads(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` with the allow-list; ``source`` names it in errors."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError as exc:
        message = str(exc)
        if not message.startswith(source):
            message = f"{source}: {message}"
        raise UnsafePickleError(message) from None
    except Exception as exc:  # truncated or not a pickle at all
        raise UnsafePickleError(f"{source}: not a readable pickle ({type(exc).__name__}: {exc})") from None


def load(path: str | Path) -> Any:
    """Read one legacy pickle file safely."""
    path = Path(path)
    return loads(path.read_bytes(), str(path))
