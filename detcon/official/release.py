"""Reading a release ``.npy`` checkpoint without JAX and without executing arbitrary pickles
(:func:`load_release_file`): a restricted unpickler that allows numpy arrays, plain builtins and
Haiku's mapping classes, the latter read as ``dict``."""

from __future__ import annotations

import builtins
import importlib
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

RELEASE_URL = "https://storage.googleapis.com/dm-detcon/"


class _HaikuMapping(dict):
    """Stand-in for Haiku's mapping classes (``FlatMapping``/``FlatMap``/``frozendict``).

    Their pickles call the class with a plain mapping (``FlatMap.__reduce__`` returns
    ``(FlatMapping, (mapping,))``; ``frozendict`` likewise), which a ``dict`` accepts. A pickle
    that instead restores slot state gets it through :meth:`__setstate__`.
    """

    def __setstate__(self, state: Any) -> None:
        slots = state[1] if isinstance(state, tuple) and len(state) == 2 else state
        for key in ("_mapping", "_storage"):
            if isinstance(slots, Mapping) and isinstance(slots.get(key), Mapping):
                self.update(slots[key])
                return
        keys = sorted(slots) if isinstance(slots, Mapping) else type(slots).__name__
        raise pickle.UnpicklingError(
            f"a Haiku mapping was pickled as internal state {keys}, which cannot be read without "
            "JAX; re-save it with a current Haiku (jax.device_get, then np.save of plain dicts)"
        )


# (module, name) -> the object to hand to the unpickler. ``numpy.core`` became ``numpy._core``
# in numpy 2: files written with either name load with either numpy.
_NUMPY_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
}
_BUILTINS_ALLOWED = {
    "dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool", "str",
    "bytes", "bytearray",
}  # fmt: skip
_HAIKU_MAPPINGS = {"FlatMapping", "FlatMap", "frozendict"}


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles of bytes use it (latin-1 only)."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


class _ReleaseUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy array reconstruction, plain builtins and Haiku's
    mapping classes (as :class:`_HaikuMapping`): nothing in a downloaded file can run code."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("haiku.") and name in _HAIKU_MAPPINGS:
            return _HaikuMapping
        if module == "builtins" and name in _BUILTINS_ALLOWED:
            return getattr(builtins, name)
        if module == "collections" and name == "OrderedDict":
            return dict
        if module == "_codecs" and name == "encode":  # bytes in protocol-2 pickles
            return _latin1_encode
        legacy = module.replace("numpy._core", "numpy.core", 1)
        if (legacy, name) in _NUMPY_ALLOWED:
            for candidate in (legacy.replace("numpy.core", "numpy._core", 1), legacy):
                try:
                    return getattr(importlib.import_module(candidate), name)
                except (ImportError, AttributeError):
                    continue
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a release checkpoint may only hold numpy "
            "arrays, Python builtins and Haiku mappings (FlatMapping/FlatMap/frozendict)"
        )


def load_release_file(path: str | Path) -> dict[str, Any]:
    """Read a release ``.npy`` checkpoint into nested plain dicts of numpy arrays, without JAX.

    The file must be an ``.npy`` holding one pickled object (``np.save`` of a dict). Only numpy
    arrays/scalars, Python builtins and Haiku's mapping classes are reconstructed; anything else
    is refused with a ValueError naming the class.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not an ``.npy`` file, not a pickled object array, a refused class, or not a
            mapping at the top.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} {'is a folder' if path.is_dir() else 'not found'}: expected a checkpoint "
            "file of the official release, e.g. "
            f"{RELEASE_URL}resnet50_detcon_b_imagenet_1k.npy"
        )
    with path.open("rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        except ValueError as exc:
            raise ValueError(
                f"{path} is not a readable .npy file ({exc}); expected a checkpoint of the "
                "official release (np.save of a pickled dict)"
            ) from exc
        if dtype != np.dtype(object) or shape != ():
            raise ValueError(
                f"{path} holds a plain {dtype} array of shape {shape}, not a pickled dict: "
                "expected a checkpoint of the official release"
            )
        try:
            obj = _ReleaseUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path}: cannot read the pickled checkpoint: {exc}") from exc
    if isinstance(obj, np.ndarray) and obj.shape == () and obj.dtype == object:
        obj = obj.item()
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a pickled dict at the top, found {type(obj).__name__}")
    return _plain(obj)


def _plain(obj: Any) -> Any:
    """Nested mappings as plain dicts with string keys."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    return obj


def _is_release_file(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(6) == b"\x93NUMPY"
