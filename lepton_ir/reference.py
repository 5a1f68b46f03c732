"""ONNX Runtime as the reference: one way to open a session, run a model, make inputs and compare.

    sess = ort_session(model)                       # Model, ModelProto, bytes or a path
    outs = run_ort(model, random_inputs(model))     # graph-output order
    bad = compare_outputs(ref, outs, rtol=1e-4, atol=1e-5)
    if bad is not None:
        print(bad)                                  # output 'y': values differ, max abs error ...

Sessions run on the CPU provider with ONNX Runtime's own graph optimizations off unless asked
for: its rewrites would blur which side a numeric difference comes from. Everything that checks a
model against ONNX Runtime (the differential instrument, `check_pass`, `lepton-run --compare`,
the benches) goes through these, so they agree on inputs and on what counts as equal.
"""

from __future__ import annotations

import dataclasses
import math
from os import PathLike
from typing import TYPE_CHECKING, Any, Mapping, Sequence, Union

import numpy as np

from .errors import UnsupportedError
from .ir import Model

if TYPE_CHECKING:
    import onnx
    import onnxruntime as ort

ModelSource = Union[Model, "onnx.ModelProto", bytes, str, PathLike]
Outputs = Union[Sequence[np.ndarray], Sequence[tuple[str, np.ndarray]], Mapping[str, np.ndarray]]

_INF = math.inf


# -- sessions -----------------------------------------------------------------------------------------
def _session_source(model: ModelSource) -> bytes | str:
    if isinstance(model, Model):
        from .onnx_io import to_onnx

        return to_onnx(model).SerializeToString()
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    if isinstance(model, (str, PathLike)):
        return str(model)  # a path: ORT resolves external data next to the file
    if hasattr(model, "SerializeToString"):
        return model.SerializeToString()
    raise TypeError(f"cannot open an ONNX Runtime session on a {type(model).__name__}")


def session_options(*, optimize: bool = False, threads: int | None = None) -> "ort.SessionOptions":
    """The options `ort_session` uses: warnings silenced, ORT's graph optimizations off unless
    `optimize`, `threads` intra-op threads when given. Start from these to set more."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimize:
        # ORT's own rewrites would blur which side a numeric difference comes from.
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads is not None:
        so.intra_op_num_threads = threads
    return so


def ort_session(model: ModelSource, *, optimize: bool = False, threads: int | None = None,
                options: "ort.SessionOptions | None" = None) -> "ort.InferenceSession":
    """An ONNX Runtime session on the CPU provider for `model`.

    `model` is a Model, an onnx.ModelProto, serialized bytes or a file path. Graph optimizations
    are off unless `optimize=True` (benchmarks, or checking what ORT's fused kernels compute);
    `threads` sets the intra-op thread count (default: ORT's choice). `options` replaces both:
    `session_options(...)` with something more set (an optimization level, an output file).
    """
    import onnxruntime as ort

    so = options if options is not None else session_options(optimize=optimize, threads=threads)
    return ort.InferenceSession(_session_source(model), so, providers=["CPUExecutionProvider"])


def feed_for(sess: "ort.InferenceSession", inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The entries of `inputs` that `sess` takes (ORT rejects unknown names)."""
    names = {i.name for i in sess.get_inputs()}
    return {k: v for k, v in inputs.items() if k in names}


def run_ort(model: ModelSource | "ort.InferenceSession", inputs: Mapping[str, np.ndarray], *,
            optimize: bool = False, threads: int | None = None) -> list[np.ndarray]:
    """Outputs of `model` under ONNX Runtime, in graph-output order; extra inputs are ignored.

    `model` may also be an already open session (then `optimize`/`threads` do not apply).
    """
    sess = model if hasattr(model, "get_inputs") else ort_session(model, optimize=optimize, threads=threads)
    return [np.asarray(x) for x in sess.run(None, feed_for(sess, inputs))]


# -- inputs ---------------------------------------------------------------------------------------------
def _random_array(rng: np.random.Generator, name: str, np_dt: np.dtype, is_float: bool,
                  dims: tuple[int, ...]) -> np.ndarray:
    if np_dt.kind == "f" or is_float:
        return rng.standard_normal(dims).astype(np_dt)
    if np_dt.kind == "b":
        return rng.integers(0, 2, dims).astype(bool)
    if np_dt.kind in "iu":
        return rng.integers(0, 4, dims).astype(np_dt)  # small and non-negative: inputs are often indices
    raise UnsupportedError(f"cannot generate data for input {name!r} of dtype {np_dt} (give inputs)")


def _specs(source: Model | Sequence[Mapping[str, Any]]) -> list[tuple[str, np.dtype, bool, Sequence[Any]]]:
    """(name, numpy dtype, is a float type, dims) of each input that needs data."""
    if not isinstance(source, Model):
        return [(str(s["name"]), np.dtype(s["dtype"]), False, s.get("shape") or ()) for s in source]
    out = []
    g = source.graph
    for v in g.inputs:
        if v.const is not None or v.name in g.initializers:
            continue  # an initializer listed as an input: it has its data
        if v.dtype is None:
            raise UnsupportedError(f"cannot generate data for input {v.name!r}: its type is unknown (give inputs)")
        shape = v.shape
        out.append((v.name, v.dtype.numpy(), v.dtype.is_float, shape.dims if shape is not None else ()))
    return out


def random_inputs(source: Model | Sequence[Mapping[str, Any]], *, seed: int = 0,
                  dim_size: int = 2) -> dict[str, np.ndarray]:
    """Deterministic random data for the inputs of a Model or of `{name, dtype, shape}` specs.

    Specs are what an artifact manifest lists (`dtype` a numpy dtype name, symbolic dims as
    strings). Symbolic or unknown dims become `dim_size`; floats are standard normal, integers
    small non-negative (0..3), bools fair coin flips. The same seed gives the same arrays.
    Raises UnsupportedError for an input of unknown type or of a kind it cannot fill (strings).
    """
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, np_dt, is_float, shape in _specs(source):
        dims = tuple(d if isinstance(d, int) else dim_size for d in shape)
        out[name] = _random_array(rng, name, np_dt, is_float, dims)
    return out


# -- comparing ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Mismatch:
    """Why two sets of outputs differ.

    `index` is the output's position (-1 when the outputs differ as a whole: count or names),
    `name` its name when the outputs were named. `max_abs`/`max_rel` are the largest errors over
    the positions that are compared (inf for a structural difference).
    """

    index: int
    name: str | None
    max_abs: float
    max_rel: float
    reason: str

    def __str__(self) -> str:
        if self.index < 0:
            return self.reason
        label = repr(self.name) if self.name is not None else f"#{self.index}"
        errors = "" if math.isinf(self.max_abs) else \
            f", max abs error {self.max_abs:.3g}, max rel error {self.max_rel:.3g}"
        return f"output {label}: {self.reason}{errors}"


def _split(outputs: Outputs) -> tuple[list[str] | None, list[np.ndarray]]:
    if isinstance(outputs, Mapping):
        return list(outputs), [np.asarray(a) for a in outputs.values()]
    items = list(outputs)
    if items and all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in items):
        return [n for n, _ in items], [np.asarray(a) for _, a in items]
    return None, [np.asarray(a) for a in items]


def _compare_one(k: int, name: str | None, a: np.ndarray, b: np.ndarray, rtol: float, atol: float,
                 exact_integers: bool) -> Mismatch | None:
    if a.shape != b.shape:
        return Mismatch(k, name, _INF, _INF, f"shape {list(b.shape)} instead of {list(a.shape)}")
    if a.dtype != b.dtype:
        return Mismatch(k, name, _INF, _INF, f"dtype {b.dtype} instead of {a.dtype}")
    if a.size == 0:
        return None
    kind = a.dtype.kind
    if kind not in "fciub" or (exact_integers and kind in "iub"):
        return None if np.array_equal(a, b) else Mismatch(k, name, _INF, _INF, "values differ")
    wide = np.complex128 if kind == "c" else np.float64
    af, bf = a.astype(wide), b.astype(wide)
    # The one NaN policy: NaN must meet NaN at the same positions; there the outputs agree.
    nan_a, nan_b = np.isnan(af), np.isnan(bf)
    if (nan_a != nan_b).any():
        return Mismatch(k, name, _INF, _INF, "NaN pattern differs")
    # Equal infinities agree too; an infinity anywhere else is a difference no tolerance covers
    # (against an infinite reference, atol + rtol*|ref| would accept anything).
    inf_a, inf_b = np.isinf(af), np.isinf(bf)
    same_inf = inf_a & (af == bf)
    if ((inf_a | inf_b) & ~same_inf).any():
        return Mismatch(k, name, _INF, _INF, "infinities differ")
    skip = nan_a | same_inf
    with np.errstate(invalid="ignore"):  # inf - inf and NaN - NaN at the skipped positions
        diff = np.where(skip, 0.0, np.abs(af - bf))
    mag = np.where(skip, 0.0, np.abs(af))
    max_abs = float(diff.max())
    rel = diff / np.maximum(mag, np.finfo(np.float64).tiny)
    max_rel = float(np.where(diff == 0, 0.0, rel).max())
    if (diff > atol + rtol * mag).any():
        return Mismatch(k, name, max_abs, max_rel, "values differ")
    return None


def compare_outputs(ref: Outputs, got: Outputs, rtol: float, atol: float, *,
                    exact_integers: bool = False) -> Mismatch | None:
    """None if `got` matches `ref` output by output, else the first Mismatch.

    Outputs are lists of arrays (positional), lists of `(name, array)` pairs or dicts (named:
    the names must match too). Shapes and dtypes must be equal; values must satisfy
    `|got - ref| <= atol + rtol * |ref|` elementwise, with NaN matching NaN at the same positions
    and equal infinities matching. Integers and bools are held to the same tolerance unless
    `exact_integers=True`; other dtypes (strings) must be equal.
    """
    ref_names, ra = _split(ref)
    got_names, ga = _split(got)
    if ref_names is not None and got_names is not None and ref_names != got_names:
        return Mismatch(-1, None, _INF, _INF, f"output names changed: {ref_names} -> {got_names}")
    if len(ra) != len(ga):
        return Mismatch(-1, None, _INF, _INF, f"{len(ga)} outputs instead of {len(ra)}")
    names = ref_names or got_names
    for k, (a, b) in enumerate(zip(ra, ga)):
        bad = _compare_one(k, names[k] if names else None, a, b, rtol, atol, exact_integers)
        if bad is not None:
            return bad
    return None


__all__ = ["ort_session", "session_options", "run_ort", "feed_for", "random_inputs", "compare_outputs", "Mismatch"]
