"""Read the tensors of a PyTorch `.pth` state dict with numpy alone: no `torch`, no code execution.

A `.pth` file is a pickle, and `torch.load` of an untrusted pickle can run any code. This reader lets the
pickle build only what a state dict is made of (an `OrderedDict`, tensors and their typed storages); any other
class the file names is refused with a one-line error. Both of PyTorch's layouts are read: the zip archive
(`torch.save` since 1.6: `*/data.pkl` plus one `*/data/KEY` entry per storage) and the legacy stream (a magic
number, a protocol version and system info, the state-dict pickle, its storage keys, then each storage as an
int64 element count followed by the raw little-endian data).
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from captioner.errors import CaptionerError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": None,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


@dataclass(frozen=True)
class _StorageType:
    name: str


@dataclass(frozen=True)
class _TensorRef:
    key: str  # the storage it views
    dtype: type
    offset: int  # in elements
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    key, dtype = storage
    return _TensorRef(str(key), dtype, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


class _StateDictUnpickler(pickle.Unpickler):
    """Builds only OrderedDicts, tensor references and storage types; every other global is an error."""

    def __init__(self, file, path: Path):
        super().__init__(file)
        self.path = path
        self.storage_numel: dict[str, int] = {}

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise CaptionerError(
            f"{self.path} is not a plain PyTorch state dict: it asks for {module}.{name}, which is not read"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] in ("storage", b"storage") and len(pid) >= 5):
            raise CaptionerError(f"{self.path}: unknown storage reference in the pickle")
        storage_type, key, _location, numel = pid[1], str(pid[2]), pid[3], pid[4]
        if not isinstance(storage_type, _StorageType) or _STORAGE_DTYPES[storage_type.name] is None:
            raise CaptionerError(f"{self.path}: storage type {storage_type} is not supported")
        self.storage_numel[key] = int(numel)
        return key, _STORAGE_DTYPES[storage_type.name]


def _view(ref: _TensorRef, flat: np.ndarray) -> np.ndarray:
    itemsize = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[ref.offset :], shape=ref.shape, strides=tuple(s * itemsize for s in ref.stride), writeable=False
    )
    return np.array(view)  # a contiguous copy; no view into the file buffer survives


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The named arrays of a PyTorch state dict file, in file order.

    Raises:
        CaptionerError: one line, for a missing, truncated or foreign file, or one whose pickle asks for code.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CaptionerError(f"weights file {path} does not exist") from None
    except OSError as exc:
        raise CaptionerError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        if zipfile.is_zipfile(io.BytesIO(data)):
            return _load_zip(data, path)
        return _load_legacy(data, path)
    except CaptionerError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        struct.error,
        ValueError,
        KeyError,
        IndexError,
        TypeError,
        AttributeError,
        zipfile.BadZipFile,
    ) as exc:
        raise CaptionerError(
            f"{path} is damaged or not a PyTorch state dict ({exc.__class__.__name__}); "
            f"reinstall the package it came from"
        ) from None


def _check(result, path: Path) -> dict:
    if not isinstance(result, dict) or not all(isinstance(v, _TensorRef) for v in result.values()):
        raise CaptionerError(f"{path} holds no state dict of tensors")
    return result


def _load_legacy(data: bytes, path: Path) -> dict[str, np.ndarray]:
    stream = io.BytesIO(data)
    restricted = lambda: _StateDictUnpickler(stream, path).load()  # noqa: E731 - headers hold only ints and dicts
    if restricted() != LEGACY_MAGIC:
        raise CaptionerError(f"{path} is not a PyTorch .pth file (no magic number)")
    restricted()  # protocol version
    info = restricted()
    if isinstance(info, dict) and not info.get("little_endian", True):
        raise CaptionerError(f"{path} was written big-endian; not supported")
    unpickler = _StateDictUnpickler(stream, path)
    refs = _check(unpickler.load(), path)
    keys = _StateDictUnpickler(stream, path).load()
    storages: dict[str, np.ndarray] = {}
    dtypes = {ref.key: ref.dtype for ref in refs.values()}
    for key in keys:
        key = str(key)
        (numel,) = struct.unpack("<q", stream.read(8))
        dtype = np.dtype(dtypes.get(key, np.uint8))
        raw = stream.read(numel * dtype.itemsize)
        if len(raw) != numel * dtype.itemsize:
            raise CaptionerError(f"{path} is truncated (storage {key} is short); reinstall the package it came from")
        storages[key] = np.frombuffer(raw, dtype=dtype)
    return {name: _view(ref, storages[ref.key]) for name, ref in refs.items()}


def _load_zip(data: bytes, path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None:
            raise CaptionerError(f"{path} is a zip archive without data.pkl; not a PyTorch state dict")
        prefix = pkl[: -len("data.pkl")]
        refs = _check(_StateDictUnpickler(io.BytesIO(archive.read(pkl)), path).load(), path)
        storages = {
            ref.key: np.frombuffer(archive.read(f"{prefix}data/{ref.key}"), dtype=ref.dtype) for ref in refs.values()
        }
    return {name: _view(ref, storages[ref.key]) for name, ref in refs.items()}
