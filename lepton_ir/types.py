"""Element types, shapes with symbolic dims, and value types (tensor, sequence, optional, map).

The integer codes of `DType` are ONNX's `TensorProto.DataType` codes, so conversion is free, but
this module imports nothing from onnx: the core IR does not depend on the serialization format.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterable, Union

import numpy as np


class DType(enum.IntEnum):
    """Tensor element types (codes equal ONNX's TensorProto.DataType)."""

    UNDEFINED = 0
    FLOAT = 1
    UINT8 = 2
    INT8 = 3
    UINT16 = 4
    INT16 = 5
    INT32 = 6
    INT64 = 7
    STRING = 8
    BOOL = 9
    FLOAT16 = 10
    DOUBLE = 11
    UINT32 = 12
    UINT64 = 13
    COMPLEX64 = 14
    COMPLEX128 = 15
    BFLOAT16 = 16
    FLOAT8E4M3FN = 17
    FLOAT8E4M3FNUZ = 18
    FLOAT8E5M2 = 19
    FLOAT8E5M2FNUZ = 20
    UINT4 = 21
    INT4 = 22
    FLOAT4E2M1 = 23
    FLOAT8E8M0 = 24
    UINT2 = 25
    INT2 = 26

    @property
    def short(self) -> str:
        """Short name used by the text form (`f32`, `i64`, ...)."""
        return _SHORT[self]

    @classmethod
    def from_short(cls, name: str) -> "DType":
        try:
            return _FROM_SHORT[name]
        except KeyError:
            raise ValueError(f"unknown element type {name!r}; known: {', '.join(_FROM_SHORT)}") from None

    @property
    def itemsize_bits(self) -> int:
        return _BITS[self]

    @property
    def is_float(self) -> bool:
        return self in _FLOATS

    @property
    def is_integer(self) -> bool:
        return self in _INTS

    def numpy(self) -> np.dtype:
        """The numpy dtype holding values of this type (ml_dtypes for the small floats/ints)."""
        return _to_numpy(self)

    @classmethod
    def from_numpy(cls, dtype: np.dtype | type) -> "DType":
        dt = np.dtype(dtype)
        for code in cls:
            if code in (cls.UNDEFINED, cls.STRING):
                continue
            try:
                if _to_numpy(code) == dt:
                    return code
            except Exception:  # ml_dtypes type missing in an old version
                continue
        if dt.kind in ("U", "S", "O"):
            return cls.STRING
        raise ValueError(f"no element type for numpy dtype {dt}")


_SHORT = {
    DType.UNDEFINED: "undef", DType.FLOAT: "f32", DType.UINT8: "u8", DType.INT8: "i8",
    DType.UINT16: "u16", DType.INT16: "i16", DType.INT32: "i32", DType.INT64: "i64",
    DType.STRING: "str", DType.BOOL: "bool", DType.FLOAT16: "f16", DType.DOUBLE: "f64",
    DType.UINT32: "u32", DType.UINT64: "u64", DType.COMPLEX64: "c64", DType.COMPLEX128: "c128",
    DType.BFLOAT16: "bf16", DType.FLOAT8E4M3FN: "f8e4m3fn", DType.FLOAT8E4M3FNUZ: "f8e4m3fnuz",
    DType.FLOAT8E5M2: "f8e5m2", DType.FLOAT8E5M2FNUZ: "f8e5m2fnuz", DType.UINT4: "u4",
    DType.INT4: "i4", DType.FLOAT4E2M1: "f4e2m1", DType.FLOAT8E8M0: "f8e8m0", DType.UINT2: "u2",
    DType.INT2: "i2",
}
_FROM_SHORT = {v: k for k, v in _SHORT.items()}
_BITS = {
    DType.UNDEFINED: 0, DType.FLOAT: 32, DType.UINT8: 8, DType.INT8: 8, DType.UINT16: 16,
    DType.INT16: 16, DType.INT32: 32, DType.INT64: 64, DType.STRING: 0, DType.BOOL: 8,
    DType.FLOAT16: 16, DType.DOUBLE: 64, DType.UINT32: 32, DType.UINT64: 64, DType.COMPLEX64: 64,
    DType.COMPLEX128: 128, DType.BFLOAT16: 16, DType.FLOAT8E4M3FN: 8, DType.FLOAT8E4M3FNUZ: 8,
    DType.FLOAT8E5M2: 8, DType.FLOAT8E5M2FNUZ: 8, DType.UINT4: 4, DType.INT4: 4,
    DType.FLOAT4E2M1: 4, DType.FLOAT8E8M0: 8, DType.UINT2: 2, DType.INT2: 2,
}
_FLOATS = {
    DType.FLOAT, DType.FLOAT16, DType.DOUBLE, DType.BFLOAT16, DType.FLOAT8E4M3FN,
    DType.FLOAT8E4M3FNUZ, DType.FLOAT8E5M2, DType.FLOAT8E5M2FNUZ, DType.FLOAT4E2M1, DType.FLOAT8E8M0,
}
_INTS = {
    DType.UINT8, DType.INT8, DType.UINT16, DType.INT16, DType.INT32, DType.INT64, DType.UINT32,
    DType.UINT64, DType.UINT4, DType.INT4, DType.UINT2, DType.INT2,
}
_NUMPY_CACHE: dict[DType, np.dtype] = {}


def _to_numpy(code: DType) -> np.dtype:
    if code in _NUMPY_CACHE:
        return _NUMPY_CACHE[code]
    plain = {
        DType.FLOAT: np.float32, DType.UINT8: np.uint8, DType.INT8: np.int8,
        DType.UINT16: np.uint16, DType.INT16: np.int16, DType.INT32: np.int32,
        DType.INT64: np.int64, DType.BOOL: np.bool_, DType.FLOAT16: np.float16,
        DType.DOUBLE: np.float64, DType.UINT32: np.uint32, DType.UINT64: np.uint64,
        DType.COMPLEX64: np.complex64, DType.COMPLEX128: np.complex128, DType.STRING: np.object_,
    }
    if code in plain:
        dt = np.dtype(plain[code])
    else:
        import ml_dtypes  # the small floats and ints; a dependency of onnx itself

        names = {
            DType.BFLOAT16: "bfloat16", DType.FLOAT8E4M3FN: "float8_e4m3fn",
            DType.FLOAT8E4M3FNUZ: "float8_e4m3fnuz", DType.FLOAT8E5M2: "float8_e5m2",
            DType.FLOAT8E5M2FNUZ: "float8_e5m2fnuz", DType.UINT4: "uint4", DType.INT4: "int4",
            DType.FLOAT4E2M1: "float4_e2m1fn", DType.FLOAT8E8M0: "float8_e8m0fnu",
            DType.UINT2: "uint2", DType.INT2: "int2",
        }
        if code not in names:
            raise ValueError(f"element type {code.name} has no numpy equivalent")
        dt = np.dtype(getattr(ml_dtypes, names[code]))
    _NUMPY_CACHE[code] = dt
    return dt


Dim = Union[int, str, None]
"""A dimension: a known size, a named symbolic size, or None for unknown."""


@dataclass(frozen=True, slots=True)
class Shape:
    """A tensor shape. Each dim is an int, a symbol (str) or None (unknown)."""

    dims: tuple[Dim, ...]

    def __init__(self, dims: Iterable[Dim]) -> None:
        object.__setattr__(self, "dims", tuple(dims))

    @property
    def rank(self) -> int:
        return len(self.dims)

    def __len__(self) -> int:
        return len(self.dims)

    def __iter__(self):
        return iter(self.dims)

    def __getitem__(self, i):
        return self.dims[i]

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.dims)

    def numel(self) -> int | None:
        """Number of elements, or None if any dim is not a known int."""
        n = 1
        for d in self.dims:
            if not isinstance(d, int):
                return None
            n *= d
        return n

    def __str__(self) -> str:
        return "[" + ",".join("?" if d is None else str(d) for d in self.dims) + "]"


class Type:
    """Base of value types."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class TensorType(Type):
    """A dense tensor: element type and optional shape (None = unknown rank)."""

    dtype: DType
    shape: Shape | None = None

    def __str__(self) -> str:
        return f"{self.dtype.short}{self.shape if self.shape is not None else ''}"


@dataclass(frozen=True, slots=True)
class SparseTensorType(Type):
    dtype: DType
    shape: Shape | None = None

    def __str__(self) -> str:
        return f"sparse<{self.dtype.short}{self.shape if self.shape is not None else ''}>"


@dataclass(frozen=True, slots=True)
class SequenceType(Type):
    elem: Type | None

    def __str__(self) -> str:
        return f"seq<{self.elem if self.elem is not None else '?'}>"


@dataclass(frozen=True, slots=True)
class OptionalType(Type):
    elem: Type | None

    def __str__(self) -> str:
        return f"opt<{self.elem if self.elem is not None else '?'}>"


@dataclass(frozen=True, slots=True)
class MapType(Type):
    key: DType
    value: Type | None

    def __str__(self) -> str:
        return f"map<{self.key.short},{self.value if self.value is not None else '?'}>"
