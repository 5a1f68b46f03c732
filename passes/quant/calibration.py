"""Calibration: sample loading, streaming range statistics and the range-selection methods.

Calibration runs the *float* model in ONNX Runtime with the activations we need added as graph
outputs (exported with `lepton_ir.to_onnx`). ONNX Runtime is used here (the only non-`lepton_ir`
dependency of the passes) because calibration needs real activation values on real data, and the
IR has no fast executor of its own; the reference evaluator would take minutes per sample.

Statistics are streamed: each batch updates, per tensor, a running min/max and a 2048-bin histogram
of |x| whose range grows by re-binning when a larger magnitude shows up. Nothing of the activations
is kept after its batch.

Range methods (the float range [lo, hi] that the quantizer will cover):
* ``minmax``: the observed min and max.
* ``percentile``: clip |x| at the given percentile of its histogram (e.g. 99.999).
* ``entropy``: TensorRT's calibration: the clip threshold minimising KL(P || Q) between the clipped
  2048-bin histogram P and its quantized version Q (128 levels for signed data, 256 for u8 of
  non-negative data).
* ``mse``: the clip threshold minimising the expected squared error (clipping error of the tail +
  uniform rounding error Delta^2 / 12 inside) under the histogram.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from lepton_ir import Model, Value
from lepton_ir.reference import ort_session, session_options

# Every error raised here is about the calibration data the user gave (its files, arrays, shapes,
# dtypes): a PassInputError, so no reproducer is written for it (ReproducerInstrument).
from ..base import PassInputError as PassError

NUM_BINS = 2048
METHODS = ("minmax", "percentile", "entropy", "mse")


# ---------------------------------------------------------------------------------------------
# Progress bar (stderr, no dependency)
# ---------------------------------------------------------------------------------------------
class Progress:
    """A one-line text progress bar on stderr: `calibrating [#####     ] 12/64 3.1s`.

    Only on a terminal. When stderr is not one (a log file, CI, a pipe), carriage-return redraws
    would fill it with garbage: a plain line every 30 s of a long calibration instead, and one at
    the end when it took more than 30 s. `LEPTON_NO_PROGRESS=1` (`lepton-opt --quiet`) silences it."""

    #: seconds between the plain lines written when stderr is not a terminal
    LINE_EVERY = 30.0

    def __init__(self, total: int | None, label: str = "calibrating", enabled: bool = True) -> None:
        self.total, self.label, self.done = total, label, 0
        self.enabled = enabled and os.environ.get("LEPTON_NO_PROGRESS", "") == ""
        try:
            self.tty = bool(sys.stderr.isatty())
        except (AttributeError, ValueError, OSError):
            self.tty = False
        self.t0 = time.perf_counter()
        self._last = 0.0 if self.tty else self.t0
        self._lines = 0

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and not self.tty:
            if now - self._last >= self.LINE_EVERY:
                self._last = now
                self._lines += 1
                of = f"/{self.total}" if self.total else ""
                sys.stderr.write(f"{self.label}: {self.done}{of} samples, {now - self.t0:.0f} s\n")
                sys.stderr.flush()
            return
        if self.enabled and (now - self._last > 0.2 or (self.total and self.done >= self.total)):
            self._last = now
            if self.total:
                k = int(30 * min(self.done, self.total) / self.total)
                bar = "#" * k + " " * (30 - k)
                sys.stderr.write(f"\r{self.label} [{bar}] {self.done}/{self.total} {now - self.t0:.1f}s")
            else:
                sys.stderr.write(f"\r{self.label} {self.done} {now - self.t0:.1f}s")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and not self.tty:
            if self._lines:
                sys.stderr.write(f"{self.label}: done, {self.done} samples in "
                                 f"{time.perf_counter() - self.t0:.0f} s\n")
                sys.stderr.flush()
            return
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


# ---------------------------------------------------------------------------------------------
# Samples
# ---------------------------------------------------------------------------------------------
def _data_inputs(model: Model) -> list[Value]:
    return [v for v in model.graph.inputs if v.name not in model.graph.initializers]


def _fit_sample(arr: np.ndarray, rank: int | None) -> np.ndarray:
    """One sample as a batch of 1: add the batch axis when the file holds a single sample."""
    if rank is not None and arr.ndim == rank - 1:
        return arr[None]
    return arr


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a `.npz` (by key) or `.npy` (key "") file, read eagerly and checked.

    Calibration files are user data: anything numpy or zipfile cannot read (truncated or corrupt
    archives, pickled objects, unsupported compression, bad headers) is a one-line PassError, and a
    header declaring more data than the file holds is refused before numpy allocates for it.
    """
    import zipfile

    from numpy.lib import format as npformat

    def header_ok(fp: object, size: int, name: str) -> None:
        version = npformat.read_magic(fp)
        shape, _, dtype = (npformat.read_array_header_1_0(fp) if version == (1, 0)
                           else npformat.read_array_header_2_0(fp))
        need = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if need > size:
            raise PassError(f"calibration file {path}: {name or 'the array'} declares shape {list(shape)} of "
                            f"{dtype} ({need} bytes) but the file holds {size} bytes")

    try:
        if path.suffix == ".npy" or not zipfile.is_zipfile(path):
            with open(path, "rb") as f:
                header_ok(f, path.stat().st_size, "")
            arrays = {"": np.load(path, allow_pickle=False)}
        else:
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    if info.filename.endswith(".npy"):
                        with zf.open(info) as f:
                            header_ok(f, info.file_size, info.filename[:-4])
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.keys()}
    except PassError:
        raise
    except Exception as e:  # noqa: BLE001 - numpy/zipfile raise a dozen types for malformed files
        msg = (str(e).splitlines() or [""])[0][:200] or type(e).__name__
        raise PassError(f"calibration file {path}: not a readable .npz/.npy file ({type(e).__name__}: {msg})") from None
    for k, a in arrays.items():
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf":
            raise PassError(f"calibration file {path}: array {k or '(the .npy)'} is not numeric "
                            f"(dtype {getattr(a, 'dtype', type(a).__name__)})")
    return arrays


def _check_feed(feed: Mapping[str, np.ndarray], inputs: Sequence[Value], where: str) -> dict[str, np.ndarray]:
    """`feed` matches the model's inputs (dtype, rank, fixed dims): ONNX Runtime would otherwise
    fail mid-calibration with its own multi-line message."""
    for v in inputs:
        a = feed.get(v.name)
        if a is None:
            raise PassError(f"{where}: no array for model input {v.name!r}")
        t = v.type
        want = getattr(t, "dtype", None)
        if want is not None:
            try:
                want_np = np.dtype(want.numpy())
            except Exception:  # a type numpy cannot name: leave the check to the runtime
                want_np = None
            if want_np is not None and a.dtype != want_np:
                raise PassError(f"{where}: array for input {v.name!r} is {a.dtype}, the model wants {want_np}")
        shape = getattr(t, "shape", None)
        if shape is not None and shape.rank is not None:
            dims = list(shape)
            if a.ndim != len(dims) or any(isinstance(d, int) and d != n for d, n in zip(dims, a.shape)):
                raise PassError(f"{where}: array for input {v.name!r} has shape {list(a.shape)}, the model wants "
                                f"{[d if isinstance(d, int) else '?' for d in dims]}")
    return dict(feed)


def random_samples(model: Model, n: int) -> Iterator[dict[str, np.ndarray]]:
    """`calib=random:N`: N synthetic samples from the input types (a smoke-test fallback only).

    Sample i equals `make_inputs(model, seed=i)` (standard normal floats, small ints, symbolic dims
    = 2), the inputs the differential instrument uses, so its check sees calibrated ranges.
    """
    from ..instruments import make_inputs  # same package; shared so the two agree

    for i in range(n):
        yield make_inputs(model, seed=i)


def load_samples(model: Model, calib: str, batch: int = 1, limit: int = 0
                 ) -> tuple[Iterator[dict[str, np.ndarray]], int]:
    """(iterator over feed dicts, number of feeds) for the `calib` option.

    * ``random:N`` - synthetic samples (see `random_samples`);
    * a ``.npz`` with one array per model input (key = input name; with a single input any key),
      first axis = samples; fed `batch` samples at a time;
    * a folder of ``.npz`` / ``.npy`` files, one sample each (``.npy`` only for single-input
      models), fed in sorted file-name order.
    `limit` > 0 caps the number of samples.
    """
    inputs = _data_inputs(model)
    names = [v.name for v in inputs]
    ranks = {v.name: (v.shape.rank if v.shape is not None else None) for v in inputs}
    if calib.startswith("random:") or calib == "random":
        text = calib.split(":", 1)[1] if ":" in calib else "8"
        if not text.isascii() or not text.isdigit() or int(text) < 1:
            raise PassError(f"calibration data {calib!r}: random:N needs a positive integer N")
        n = int(text)
        if limit:
            n = min(n, limit)
        return random_samples(model, n), n
    path = Path(calib)
    try:  # Path.is_file raises on some bad paths (too long, ...) instead of answering False
        is_file, is_dir = path.is_file(), path.is_dir()
    except (OSError, ValueError) as e:
        raise PassError(f"calibration data {calib[:200]!r}: {getattr(e, 'strerror', None) or e}") from None
    if is_file:
        data = _read_arrays(path)
        keys = list(data.keys())
        arrays: dict[str, np.ndarray] = {}
        for nm in names:
            if nm in keys:
                arrays[nm] = data[nm]
            elif len(names) == 1 and len(keys) == 1:
                arrays[nm] = data[keys[0]]
            else:
                raise PassError(f"calibration file {calib}: no array for model input {nm!r} (has {keys}); "
                                f"the input wants {_wants(inputs, nm)}")
        for nm, a in arrays.items():
            if a.ndim == 0:
                raise PassError(f"calibration file {calib}: array for {nm!r} is a scalar; its first axis must "
                                "count the samples")
        n = min((a.shape[0] for a in arrays.values()), default=0)
        if limit:
            n = min(n, limit)
        batch = max(1, batch)

        def gen() -> Iterator[dict[str, np.ndarray]]:
            for i in range(0, n, batch):
                feed = {}
                for k, a in arrays.items():
                    chunk = a[i:min(i + batch, n)]
                    # An array of [S, 1, C, H, W] holds samples that already carry a batch axis.
                    if ranks[k] is not None and chunk.ndim == ranks[k] + 1:
                        # Explicit size: -1 cannot be inferred when another axis is 0 (fuzzed file).
                        chunk = chunk.reshape((chunk.shape[0] * chunk.shape[1],) + chunk.shape[2:])
                    feed[k] = chunk
                yield _check_feed(feed, inputs, f"calibration file {calib} (samples {i}..{min(i + batch, n) - 1})")

        return gen(), math.ceil(n / batch)
    if is_dir:
        files = sorted(p for p in path.iterdir() if p.suffix in (".npz", ".npy"))
        if limit:
            files = files[:limit]
        if not files:
            raise PassError(f"calibration folder {calib} holds no .npz/.npy files")

        def gen_dir() -> Iterator[dict[str, np.ndarray]]:
            for p in files:
                if p.suffix == ".npy":
                    if len(names) != 1:
                        raise PassError(f"{p}: .npy samples need a single-input model (inputs: {names})")
                    feed = {names[0]: _fit_sample(_read_arrays(p)[""], ranks[names[0]])}
                else:
                    d = _read_arrays(p)
                    keys = list(d.keys())
                    if len(names) == 1 and names[0] not in keys and len(keys) == 1:
                        feed = {names[0]: _fit_sample(d[keys[0]], ranks[names[0]])}
                    else:
                        missing = [k for k in names if k not in d]
                        if missing:
                            raise PassError(f"{p}: no array for model input {missing[0]!r} (has {keys}); "
                                            f"the input wants {_wants(inputs, missing[0])}")
                        feed = {k: _fit_sample(d[k], ranks[k]) for k in names}
                yield _check_feed(feed, inputs, str(p))

        return gen_dir(), len(files)
    raise PassError(f"calibration data {calib!r}: not a file, a folder or random:N")


# ---------------------------------------------------------------------------------------------
# Streaming statistics
# ---------------------------------------------------------------------------------------------
class TensorStats:
    """Running min/max and a histogram of |x| over [0, hist_max] (grows by re-binning)."""

    __slots__ = ("min", "max", "hist", "hist_max", "count", "keep_hist", "sumsq")

    def __init__(self, keep_hist: bool) -> None:
        self.min = math.inf
        self.max = -math.inf
        self.hist: np.ndarray | None = None
        self.hist_max = 0.0
        self.count = 0
        self.sumsq = 0.0
        self.keep_hist = keep_hist

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if x.size == 0:
            return
        if x.dtype != np.float32:
            x = x.astype(np.float32)
        lo, hi = float(x.min()), float(x.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            x = x[np.isfinite(x)]
            if x.size == 0:
                return
            lo, hi = float(x.min()), float(x.max())
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += x.size
        self.sumsq += float(np.dot(x.ravel().astype(np.float64), x.ravel().astype(np.float64)))
        if not self.keep_hist:
            return
        # Exact zeros (ReLU outputs, padding) are representable whatever the range; leaving their
        # spike out keeps it from dominating the KL / MSE / percentile searches.
        a = np.abs(x).ravel()
        a = a[a != 0]
        amax = max(-lo, hi)
        if self.hist is None:
            self.hist_max = amax if amax > 0 else 1e-8
            self.hist = np.zeros(NUM_BINS, np.float64)
        if a.size == 0:
            return
        if amax > self.hist_max:
            self._grow(amax)
        idx = np.minimum((a * (NUM_BINS / self.hist_max)).astype(np.int64), NUM_BINS - 1)
        self.hist += np.bincount(idx, minlength=NUM_BINS)

    def _grow(self, amax: float) -> None:
        """Re-bin the histogram onto [0, new_max]; new_max leaves headroom to re-bin rarely."""
        new_max = max(amax, self.hist_max * 1.5)
        centers = (np.arange(NUM_BINS) + 0.5) * (self.hist_max / NUM_BINS)
        idx = np.minimum((centers * (NUM_BINS / new_max)).astype(np.int64), NUM_BINS - 1)
        self.hist = np.bincount(idx, weights=self.hist, minlength=NUM_BINS).astype(np.float64)
        self.hist_max = new_max

    def expected_sqnr(self, lo: float, hi: float, step: float) -> float:
        """Expected SQNR (dB) of quantizing this tensor to [lo, hi] with step `step`, from the
        histogram: rounding noise step^2 / 12 inside the range, (|x| - t)^2 beyond it (t the larger
        bound on the side; the |x| histogram cannot tell the sides apart). inf without a histogram."""
        if self.hist is None or self.sumsq <= 0:
            return math.inf
        t = max(-lo, hi)
        centers = (np.arange(NUM_BINS) + 0.5) * self.hist_max / NUM_BINS
        clip = np.maximum(centers - t, 0.0)
        inside = centers <= t
        noise = float(np.sum(self.hist * (clip ** 2 + inside * step * step / 12.0)))
        return 10.0 * math.log10(self.sumsq / noise) if noise > 0 else math.inf

    def range(self, method: str, percentile: float = 99.999, signed: bool = False) -> tuple[float, float]:
        """The float range [lo, hi] to quantize, chosen by `method`."""
        if self.count == 0:
            return (0.0, 0.0)
        if method == "minmax" or self.hist is None or self.hist.sum() == 0:
            return (self.min, self.max)
        nonneg = self.min >= 0 and not signed
        if method == "percentile":
            t = percentile_threshold(self.hist, self.hist_max, percentile)
        elif method == "entropy":
            t = entropy_threshold(self.hist, self.hist_max, 256 if nonneg else 128)
        elif method == "mse":
            t = mse_threshold(self.hist, self.hist_max, 255 if nonneg else (127 if signed else 255), not nonneg and not signed)
        else:
            raise PassError(f"unknown calibration method {method!r}; known: {', '.join(METHODS)}")
        return (max(self.min, -t), min(self.max, t))


def percentile_threshold(hist: np.ndarray, hist_max: float, percentile: float) -> float:
    """|x| value below which `percentile` % of the histogram mass lies (upper bin edge)."""
    cdf = np.cumsum(hist)
    k = int(np.searchsorted(cdf, cdf[-1] * percentile / 100.0))
    return (min(k, len(hist) - 1) + 1) * hist_max / len(hist)


def entropy_threshold(hist: np.ndarray, hist_max: float, levels: int = 128, stride: int = 16) -> float:
    """TensorRT entropy calibration: the clip threshold minimising KL(P || Q).

    For each candidate i (bins kept), P = hist[:i] with the clipped tail added to its last bin and
    Q = hist[:i] merged into `levels` groups and spread back uniformly over each group's non-empty
    bins. Candidates step by `stride` bins (the curve is smooth; 16x fewer KL evaluations).
    """
    n = len(hist)
    hist = hist.astype(np.float64)
    if n <= levels:
        return hist_max
    best_kl, best_i = math.inf, n
    total_tail = np.cumsum(hist[::-1])[::-1]  # total_tail[i] = sum(hist[i:])
    for i in range(levels, n + 1, stride):
        p = hist[:i].copy()
        if i < n:
            p[-1] += total_tail[i]
        ref = hist[:i]
        nz = ref > 0
        # Merge i bins into `levels` groups (group boundaries as in TensorRT: i / levels per group).
        edges = np.linspace(0, i, levels + 1).astype(np.int64)
        sums = np.add.reduceat(ref, edges[:-1])
        cnts = np.add.reduceat(nz.astype(np.float64), edges[:-1])
        group = np.repeat(np.arange(levels), np.diff(edges))
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(nz, (sums / np.maximum(cnts, 1))[group], 0.0)
        ps, qs = p.sum(), q.sum()
        if ps <= 0 or qs <= 0:
            continue
        p_n, q_n = p / ps, q / qs
        m = p_n > 0
        # Bins where P > 0 and Q = 0 get a tiny Q (as TensorRT smooths), not an infinite KL.
        kl = float(np.sum(p_n[m] * np.log(p_n[m] / np.maximum(q_n[m], 1e-12))))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return (best_i + 0.5) * hist_max / n if best_i < n else hist_max


def mse_threshold(hist: np.ndarray, hist_max: float, levels: int, two_sided: bool) -> float:
    """The clip threshold t minimising the expected squared quantization error under `hist`.

    Inside [-t, t] (or [0, t]) the error of rounding to a step Delta is ~ Delta^2 / 12; beyond t the
    error is (|x| - t)^2. Delta = (2t or t) / levels.
    """
    n = len(hist)
    centers = (np.arange(n) + 0.5) * hist_max / n
    cands = np.linspace(hist_max / 64, hist_max, 256)
    span = 2.0 if two_sided else 1.0
    delta = span * cands / levels
    clip = np.maximum(centers[None, :] - cands[:, None], 0.0) ** 2
    inside = (centers[None, :] <= cands[:, None]) * (delta[:, None] ** 2 / 12.0)
    err = ((clip + inside) * hist[None, :]).sum(axis=1)
    return float(cands[int(np.argmin(err))])


# ---------------------------------------------------------------------------------------------
# Running the float model with extra outputs
# ---------------------------------------------------------------------------------------------
def ort_session_with_outputs(model: Model, values: Sequence[Value], threads: int = 0):
    """An ONNX Runtime session of `model` whose outputs are its own plus `values` (in that order).

    The outputs are added to the graph only for the export and removed again, so `model` is left
    as it was. Values without names get fresh ones (names are harmless and help debugging).
    """
    import onnxruntime as ort  # calibration must execute the float model (see module doc)

    import lepton_ir

    g = model.graph
    for v in values:
        if not v.name:
            v.name = g.fresh_name("q_calib")
    saved = list(g.outputs)
    present = {id(o) for o in saved}
    g.outputs.extend(v for v in values if id(v) not in present)
    try:
        proto = lepton_ir.to_onnx(model)
    finally:
        g.outputs[:] = saved
    # Outputs without a known element type still need one in the proto: give the float type.
    for o in proto.graph.output:
        if not o.type.HasField("tensor_type"):
            o.type.tensor_type.elem_type = 1
    so = session_options(threads=threads or None)
    # Basic optimizations only: fusions must not change the intermediate values we read.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort_session(proto, options=so)


def _wants(inputs: Sequence[Value], name: str) -> str:
    """`float32 [?, 1, 8, 8]`: what model input `name` takes (for error messages)."""
    v = next((x for x in inputs if x.name == name), None)
    if v is None or v.type is None:
        return "an array"
    dt = getattr(v, "dtype", None)
    try:
        dts = np.dtype(dt.numpy()).name if dt is not None else "?"
    except Exception:
        dts = str(dt)
    shape = v.shape
    dims = "[" + ", ".join(str(d) if isinstance(d, int) else "?" for d in shape.dims) + "]" if shape is not None \
        else "any shape"
    return f"{dts} {dims}"


def _symbolic_dims(model: Model) -> dict[str, list[object]]:
    """Inputs with symbolic (or unknown) dims: name -> dims (ints, symbol names, None)."""
    out = {}
    for v in _data_inputs(model):
        dims = list(v.shape.dims) if v.shape is not None else []
        if any(not isinstance(d, int) for d in dims):
            out[v.name] = dims
    return out


def _calibration_run_error(model: Model, feeds: object, k: int, feed: Mapping[str, np.ndarray],
                           e: BaseException) -> str:
    first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
    msg = f"calibration: ONNX Runtime cannot run the model on sample {k}: {first}"
    symbolic = _symbolic_dims(model)
    if symbolic and getattr(getattr(feeds, "gi_code", None), "co_name", "") == "random_samples":
        names = sorted({str(d) for dims in symbolic.values() for d in dims if not isinstance(d, int)})
        shapes = " ".join(f"{n}=" + "x".join(str(d) if isinstance(d, int) else "?" for d in dims)
                          for n, dims in symbolic.items())
        used = ", ".join(f"{n} {list(feed[n].shape)}" for n in symbolic if n in feed)
        msg = (f"calibration on random data sets the symbolic dims {', '.join(names)} to 2 ({used}) and ONNX "
               f"Runtime cannot run the model so ({first}): give the real input sizes with --input-shape "
               f"{shapes} (each ? a size the model takes), or real samples with calib=")
    return msg


def collect_stats(model: Model, values: Sequence[Value], feeds: Iterator[Mapping[str, np.ndarray]],
                  total: int | None, keep_hist: bool, progress: bool = True,
                  on_batch: Callable[[dict[str, np.ndarray]], None] | None = None) -> dict[str, TensorStats]:
    """Stream `feeds` through the float model and return statistics of each value (by name)."""
    sess = ort_session_with_outputs(model, values)
    out_names = [o.name for o in sess.get_outputs()]
    wanted = {v.name for v in values}
    in_names = {i.name for i in sess.get_inputs()}
    stats = {name: TensorStats(keep_hist) for name in wanted}
    bar = Progress(total, enabled=progress)
    try:
        for k, feed in enumerate(feeds):
            try:
                res = sess.run(None, {key: v for key, v in feed.items() if key in in_names})
            except Exception as e:  # ORT's multi-line message: one line, and what to do about it
                raise PassError(_calibration_run_error(model, feeds, k, feed, e)) from None
            batch = {n: r for n, r in zip(out_names, res)}
            for name in wanted:
                r = batch.get(name)
                if r is not None and np.asarray(r).dtype.kind == "f":
                    stats[name].update(r)
            if on_batch is not None:
                on_batch(batch)
            bar.update()
    finally:
        bar.close()
    return stats
