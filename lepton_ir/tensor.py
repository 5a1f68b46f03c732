"""Constant tensors. The core only knows the `Tensor` interface; loaders provide lazy variants.

A `Tensor` is immutable from the IR's point of view: passes that compute new constants create new
tensors. That lets import keep weights memory-mapped or still encoded, and export write them back
untouched, so a round trip costs no copy of the weights.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from .types import DType, Shape


class Tensor:
    """A constant: element type, static shape, and data obtainable as numpy."""

    __slots__ = ("name", "doc")

    def __init__(self, name: str | None = None, doc: str = "") -> None:
        self.name = name
        self.doc = doc

    @property
    def dtype(self) -> DType:
        raise NotImplementedError

    @property
    def shape(self) -> Shape:
        raise NotImplementedError

    def numpy(self) -> np.ndarray:
        """The data as a numpy array. May be a read-only view (memory-mapped); do not mutate."""
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        n = self.shape.numel() or 0
        return (n * self.dtype.itemsize_bits + 7) // 8

    @property
    def size(self) -> int:
        return self.shape.numel() or 0

    def digest(self) -> str:
        """A content hash (dtype, shape, bytes); used by CSE and summarised printing."""
        h = hashlib.sha256()
        h.update(f"{self.dtype.value}:{self.shape.dims}".encode())
        arr = self.numpy()
        if arr.dtype == object:
            for s in arr.ravel():
                b = s if isinstance(s, bytes) else str(s).encode()
                h.update(len(b).to_bytes(8, "little") + b)
        else:
            h.update(np.ascontiguousarray(arr).view(np.uint8).tobytes() if arr.size else b"")
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.dtype.short}{self.shape}>"


class ArrayTensor(Tensor):
    """A tensor backed by a numpy array (no copy is made)."""

    __slots__ = ("_array", "_dtype")

    def __init__(self, array: Any, name: str | None = None, dtype: DType | None = None, doc: str = "") -> None:
        super().__init__(name, doc)
        arr = array if isinstance(array, np.ndarray) else np.asarray(array)
        self._dtype = dtype if dtype is not None else DType.from_numpy(arr.dtype)
        self._array = arr

    @property
    def dtype(self) -> DType:
        return self._dtype

    @property
    def shape(self) -> Shape:
        return Shape(self._array.shape)

    def numpy(self) -> np.ndarray:
        return self._array


class SparseTensor:
    """A COO sparse constant (ONNX SparseTensorProto): values, indices and dense dims."""

    __slots__ = ("values", "indices", "dims")

    def __init__(self, values: Tensor, indices: Tensor, dims: tuple[int, ...]) -> None:
        self.values = values
        self.indices = indices
        self.dims = tuple(dims)

    @property
    def dtype(self) -> DType:
        return self.values.dtype

    def __repr__(self) -> str:
        return f"<SparseTensor {self.values.dtype.short}{list(self.dims)} nnz={self.values.size}>"
