"""Read files written by ``torch.save`` without torch and without running code from them.

A ``.model`` file is ``torch.save(model)``: a zip holding ``<name>/data.pkl`` (a pickle
of the whole ``nn.Module`` tree) and ``<name>/data/<key>`` (the raw bytes of every
tensor storage). ``torch.load(weights_only=False)`` imports and calls whatever globals
the pickle names, so a crafted file runs arbitrary code. Here the pickle is read by an
unpickler that resolves only an allow-list:

* data constructors, re-implemented here on NumPy: tensors, parameters and storages,
  ``OrderedDict``, ``set``, ``slice``, ``_codecs.encode`` (latin-1 bytes), NumPy numeric
  dtypes and scalars, ``torch.Size``, ``torch.device`` and dtype names;
* the classes of a MACE model (mace-torch, e3nn, torch.nn containers, torch.fx
  bookkeeping) and its activation functions, which become inert ``Record`` objects that
  keep their name and pickled state: nothing of theirs is ever called.

Any other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``, a class of
some other package, ...) stops the read with an ``ArchiveError`` that names it.
"""

from __future__ import annotations

import codecs
import collections
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArchiveError

# Storage classes of torch's zip format -> the NumPy dtype of their bytes (little-endian).
STORAGE_DTYPES = {
    "DoubleStorage": "<f8", "FloatStorage": "<f4", "HalfStorage": "<f2", "BFloat16Storage": None,
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?",
}

# Module prefixes whose classes (and functions) become inert records: the building blocks of a
# mace-torch model. Whether a record is a *supported* block is the converter's question.
RECORD_MODULES = ("mace.", "e3nn.", "torch.nn.modules.", "torch.fx.", "opt_einsum_fx.",
                  "cuequivariance", "cuequivariance_torch.", "openequivariance.")
# Single functions a model stores as attributes (activations), also kept as records.
RECORD_NAMES = {
    "torch.nn.functional.silu", "torch.nn.functional.relu", "torch.nn.functional.gelu",
    "torch.nn.functional.softplus", "torch.tanh", "torch.abs", "torch.sigmoid", "torch.exp",
    "torch.nn.functional.tanh", "torch.nn.functional.sigmoid",
}


class Record:
    """An object of a pickled class, kept as data: its class name, constructor arguments and state."""

    kind = "?"  # "module.QualName" of the pickled class; set on the per-name subclasses

    def __new__(cls, *args, **kwargs):
        record = object.__new__(cls)
        object.__setattr__(record, "args", args)
        object.__setattr__(record, "state", {})
        return record

    def __init__(self, *args, **kwargs):  # REDUCE calls cls(*args): keep them, run nothing
        pass

    def __setstate__(self, state):
        """pickle's BUILD: a dict (and maybe slot values) stored as data, never as attributes."""
        if isinstance(state, tuple) and len(state) == 2 and all(s is None or isinstance(s, dict) for s in state):
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.state.update(state)
        else:
            self.state["__state__"] = state

    def __setattr__(self, name, value):
        raise AttributeError("records are read-only")

    @property
    def name(self) -> str:
        """The class name without its module, e.g. 'RealAgnosticInteractionBlock'."""
        return self.kind.rsplit(".", 1)[-1]

    def __repr__(self):
        return f"<record {self.kind}>"

    # -- torch.nn.Module views

    @property
    def is_module(self) -> bool:
        return "_modules" in self.state

    def children(self) -> dict[str, Any]:
        return dict(self.state.get("_modules") or {})

    def get(self, name: str, default=None):
        """A plain attribute, a child module, a parameter or a buffer, in that order."""
        for table in (self.state, self.state.get("_modules") or {}, self.state.get("_parameters") or {},
                      self.state.get("_buffers") or {}):
            if name in table and not (table is self.state and name.startswith("_")):
                return table[name]
        return default

    def path(self, dotted: str):
        """The object at a dotted module path ('interactions.0.linear'), or None."""
        node = self
        for part in dotted.split("."):
            if not isinstance(node, Record):
                return None
            node = node.get(part)
        return node


_record_classes: dict[str, type] = {}


def record_class(kind: str) -> type:
    if kind not in _record_classes:
        _record_classes[kind] = type(kind.rsplit(".", 1)[-1], (Record,), {"kind": kind, "__module__": __name__})
    return _record_classes[kind]


class TorchStorage:
    """A storage class named by a persistent id: only its dtype matters."""

    def __init__(self, name: str):
        self.name = name


class DtypeRecord:
    """numpy.dtype(name) restricted to numeric types; the byte order comes with BUILD."""

    def __init__(self, name, align=False, copy=True):
        dtype = np.dtype(str(name))
        if dtype.kind not in "biufc":
            raise ArchiveError(f"refusing NumPy dtype {name!r} in a torch pickle: only numeric dtypes are read")
        self.dtype = dtype

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) > 1 and state[1] in "<>|=":
            self.dtype = self.dtype.newbyteorder(state[1]) if state[1] in "<>" else self.dtype


def _numpy_scalar(dtype, data=b""):
    dtype = dtype.dtype if isinstance(dtype, DtypeRecord) else None
    if dtype is None or not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise ArchiveError("malformed NumPy scalar in a torch pickle")
    return np.frombuffer(data, dtype)[0]


def _codecs_encode(text, encoding="utf-8", errors="strict"):
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise ArchiveError(f"refusing _codecs.encode({encoding!r}) in a torch pickle")
    return codecs.encode(text, "latin1")


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    """A NumPy copy of the tensor view, with bounds checked (strided views read raw memory)."""
    if not isinstance(storage, np.ndarray):
        raise ArchiveError("a tensor in the torch pickle has no storage")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    offset = int(storage_offset)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise ArchiveError(f"malformed tensor in the torch pickle: size {size}, stride {stride}, offset {offset}")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise ArchiveError(f"a tensor of size {size} reads past the end of its storage ({storage.size} elements)")
    view = np.lib.stride_tricks.as_strided(storage[offset:], size, tuple(s * storage.itemsize for s in stride))
    return np.array(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    if func not in (_rebuild_tensor, _rebuild_parameter):
        raise ArchiveError("refusing a tensor subclass rebuilt by an unknown function")
    return func(*args)


def _ordered_dict(*args):
    return collections.OrderedDict(*args) if args else collections.OrderedDict()


_TORCH_DTYPES = {f"torch.{name}" for name in (
    "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
    "double", "float", "half", "long", "int", "short",
)}

# Exact globals -> safe re-implementations (what each builds is plain data).
CONSTRUCTORS = {
    "collections.OrderedDict": _ordered_dict,
    "builtins.set": set, "__builtin__.set": set,
    "builtins.frozenset": frozenset, "__builtin__.frozenset": frozenset,
    "builtins.slice": slice, "__builtin__.slice": slice,
    "_codecs.encode": _codecs_encode,
    "numpy.dtype": DtypeRecord,
    "numpy.core.multiarray.scalar": _numpy_scalar,
    "numpy._core.multiarray.scalar": _numpy_scalar,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch.Size": lambda *args: tuple(*args),
    "torch.device": lambda *args: ":".join(str(a) for a in args),
}


class RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler whose globals come from the allow-list above, storages from the zip."""

    def __init__(self, data: bytes, read_storage):
        super().__init__(io.BytesIO(data))
        self._read_storage = read_storage

    def find_class(self, module: str, name: str):
        full = f"{module}.{name}"
        if full in CONSTRUCTORS:
            return CONSTRUCTORS[full]
        if module == "torch" and name in STORAGE_DTYPES:
            return TorchStorage(name)
        if full in _TORCH_DTYPES:
            return full
        if full in RECORD_NAMES or (full.startswith(RECORD_MODULES) and "." in module):
            return record_class(full)
        raise ArchiveError(
            f"refusing to load the global '{full}' named in the torch pickle: it is not a part of a MACE "
            "model, and loading it could run code (the file is damaged or not a mace-torch model)"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
            raise ArchiveError(f"unexpected persistent id in the torch pickle: {pid!r}")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, TorchStorage):
            raise ArchiveError(f"unexpected storage type in the torch pickle: {storage_type!r}")
        return self._read_storage(key, storage_type.name)


def read_torch_file(path: str | Path) -> Any:
    """The object ``torch.save`` wrote (a Record tree for a whole model, an OrderedDict of
    NumPy arrays for a state_dict), read without torch and without running code."""
    path = Path(path)
    if not path.exists():
        raise ArchiveError(f"model file not found: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pickles) != 1:
                raise ArchiveError(f"{path} is not a torch.save file: it has no single <name>/data.pkl")
            prefix = pickles[0][: -len("data.pkl")]
            byteorder = "little"
            if prefix + "byteorder" in names:
                byteorder = archive.read(prefix + "byteorder").decode().strip()
            cache: dict[str, np.ndarray] = {}

            def read_storage(key: str, storage_name: str) -> np.ndarray:
                if key not in cache:
                    dtype = STORAGE_DTYPES[storage_name]
                    if dtype is None:
                        raise ArchiveError(f"{path}: {storage_name} tensors are not supported")
                    dtype = np.dtype(dtype)
                    if byteorder == "big" and dtype.itemsize > 1:
                        dtype = dtype.newbyteorder(">")
                    try:
                        raw = archive.read(f"{prefix}data/{key}")
                    except KeyError:
                        raise ArchiveError(f"{path}: tensor storage data/{key} is missing") from None
                    if len(raw) % dtype.itemsize:
                        raise ArchiveError(f"{path}: tensor storage data/{key} has a partial element")
                    cache[key] = np.frombuffer(raw, dtype).astype(dtype.newbyteorder("="))
                return cache[key]

            return RestrictedUnpickler(archive.read(pickles[0]), read_storage).load()
    except ArchiveError:
        raise
    except zipfile.BadZipFile:
        raise ArchiveError(
            f"{path} is not a zip file: not a model saved by a recent torch.save (the legacy pre-1.6 "
            "format is not read; load it with torch and save it again)"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            OSError, RecursionError, MemoryError) as error:
        raise ArchiveError(f"{path}: the torch pickle is truncated or corrupt ({type(error).__name__}: {error})") from None


def module_state_dict(module: Record, prefix: str = "") -> dict[str, np.ndarray]:
    """``nn.Module.state_dict()`` of a record tree: parameters and persistent buffers by dotted name."""
    out: dict[str, np.ndarray] = {}
    non_persistent = set(module.state.get("_non_persistent_buffers_set") or ())
    for name, value in (module.state.get("_parameters") or {}).items():
        if value is not None:
            out[prefix + name] = value
    for name, value in (module.state.get("_buffers") or {}).items():
        if value is not None and name not in non_persistent:
            out[prefix + name] = value
    for name, child in (module.state.get("_modules") or {}).items():
        if isinstance(child, Record):
            out.update(module_state_dict(child, prefix + name + "."))
    return out
