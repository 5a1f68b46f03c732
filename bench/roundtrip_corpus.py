"""Lossless round trip of every model Lepton has: import with lepton_ir, export, compare.

For each model of three corpora

* ``node``  - the ONNX per-operator conformance cases (`conformance_cases()`, 1884 with onnx 1.23.2),
* ``data``  - the light/simple/pytorch-* models shipped in the onnx wheel (`onnx_data_models()`),
* ``real``  - the real pretrained models (`REAL_MODELS`), both through `to_onnx` and through
  `lepton_ir.save` + `lepton_ir.load` from a file (the memory-mapped path),

it checks that

1. the original passes `onnx.checker.check_model(full_check=True)`, and if so the export does too;
2. ONNX Runtime runs the original, and if so it runs the export and gives bit-identical outputs.

A model "should round-trip" when its original passes the checker (then so must the export) and
when ONNX Runtime runs the original (then the export must run and match bit for bit). Ops whose
output is random (RandomNormal, Bernoulli, ...) are recognised by running the original twice when
the export differs; those are reported as nondeterministic, not failures.

Run from the repository root::

    python bench/roundtrip_corpus.py                 # all corpora
    python bench/roundtrip_corpus.py --corpus real   # one corpus
    python bench/roundtrip_corpus.py --limit 200     # a quick subset of each

Exit status is 1 if any model that should round-trip does not. The per-model logic lives in
`check_proto` / `check_file` so `tests/ir/test_roundtrip.py` can reuse it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
import tempfile
import time
import warnings
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from a checkout
import lepton_ir  # noqa: E402
import lepton_ir.testing.corpus as corpus  # noqa: E402  (direct: robust to the package __init__)
from lepton_ir.reference import ort_session  # noqa: E402


@dataclasses.dataclass
class Result:
    """What happened to one model. `failure` is set when it should round-trip and does not."""

    name: str
    checker_orig: bool = False
    checker_export: bool | None = None  # None: not checked (original failed the checker)
    ort_orig: bool = False
    bit_identical: bool | None = None  # None: not compared (ORT does not run the original)
    nondeterministic: bool = False
    failure: str | None = None
    note: str = ""  # why the original did not pass the checker / run (informational)


# ------------------------------------------------------------------------------------------------
# Running and comparing
# ------------------------------------------------------------------------------------------------
def _session(model: onnx.ModelProto | str) -> ort.InferenceSession:
    # One thread: some kernels reduce in a thread-dependent order, which would make two runs of
    # the *same* model differ in the last bit and hide (or fake) a round-trip difference.
    return ort_session(model, optimize=True, threads=1)


def _feeds(model: onnx.ModelProto, inputs: Sequence[Any] | dict[str, Any]) -> dict[str, Any]:
    """Inputs by name. Positional inputs follow graph.input (as onnx's test runner does);
    omitted optionals (None) are left out of the feed."""
    if isinstance(inputs, dict):
        return dict(inputs)
    names = [vi.name for vi in model.graph.input]
    inits = {t.name for t in model.graph.initializer}
    free = [n for n in names if n not in inits]
    if len(inputs) == len(free) != len(names):
        names = free  # IR < 4 models list initializers as inputs; `light` inputs skip those
    return {n: x for n, x in zip(names, inputs) if x is not None}


def _same_bits(a: Any, b: Any) -> bool:
    """Bit-for-bit equality of ORT outputs (arrays, sequences, optionals, maps)."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, dict) or isinstance(b, dict):
        return isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys() and \
            all(_same_bits(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b) and \
            all(_same_bits(x, y) for x, y in zip(a, b))
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == object:
        return a.tolist() == b.tolist()
    # Compare bytes, not values: NaN payloads and -0.0 must survive too.
    return np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def _check(model: onnx.ModelProto | str) -> str | None:
    """None if the full checker passes, else its first message line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx.checker.check_model(model, full_check=True)
        return None
    except Exception as e:  # the checker raises ValidationError, InferenceError, ...
        return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _run(model: onnx.ModelProto | str, feeds: dict[str, Any]) -> list[Any]:
    return _session(model).run(None, feeds)


def _compare(res: Result, original: onnx.ModelProto | str, export: onnx.ModelProto | str,
             feeds: dict[str, Any] | None) -> Result:
    """Fill in checker and ORT fields; `original`/`export` are protos or file paths."""
    err = _check(original)
    res.checker_orig = err is None
    if err is None:
        err2 = _check(export)
        res.checker_export = err2 is None
        if err2 is not None:
            res.failure = f"export fails onnx.checker: {err2}"
    else:
        res.note = f"original fails checker: {err}"
    if feeds is None:
        return res
    try:
        want = _run(original, feeds)
        res.ort_orig = True
    except Exception as e:
        res.note += f"; ORT cannot run original: {str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__}"
        return res
    try:
        got = _run(export, feeds)
    except Exception as e:
        res.bit_identical = False
        res.failure = res.failure or f"ORT runs the original but not the export: {str(e).strip()[:300]}"
        return res
    same = len(got) == len(want) and all(_same_bits(x, y) for x, y in zip(got, want))
    if not same:
        # Random ops: does the original even agree with itself?
        again = _run(original, feeds)
        if not all(_same_bits(x, y) for x, y in zip(again, want)):
            res.nondeterministic = True
            res.bit_identical = None
            return res
        bad = [i for i, (x, y) in enumerate(zip(got, want)) if not _same_bits(x, y)]
        res.failure = res.failure or f"ORT outputs differ (outputs {bad or 'count'})"
    res.bit_identical = same
    return res


def check_proto(name: str, model: onnx.ModelProto, inputs: Sequence[Any] | dict[str, Any] | None) -> Result:
    """Round-trip a ModelProto through `lepton_ir.load` + `lepton_ir.to_onnx` and compare."""
    res = Result(name)
    try:
        export = lepton_ir.to_onnx(lepton_ir.load(model))
    except Exception as e:
        # Import must work for anything the checker accepts; for the rest a LeptonError is fine.
        res.failure = f"import/export raised {type(e).__name__}: {e}"
        if isinstance(e, lepton_ir.LeptonError) and _check(model) is not None:
            res.failure = None
            res.note = f"refused (original is invalid): {e}"
        return res
    return _compare(res, model, export, _feeds(model, inputs) if inputs is not None else None)


def check_file(name: str, path: str | os.PathLike, inputs: Sequence[Any] | dict[str, Any] | None,
               *, via_save: bool = False) -> Result:
    """Round-trip a model file: `load(path)` then `to_onnx`, or with `via_save` then `save` to a
    temporary file and `load` that again (mapped weights all the way) before exporting it."""
    res = Result(name + (" [save+load]" if via_save else ""))
    path = str(path)
    original = onnx.load(path)
    try:
        m = lepton_ir.load(path)
        with tempfile.TemporaryDirectory() as tmp:
            if via_save:
                out = os.path.join(tmp, "roundtrip.onnx")
                lepton_ir.save(m, out)
                m2 = lepton_ir.load(out)
                export = lepton_ir.to_onnx(m2)
                # Compare the *file* too: ORT and the checker read it as a user would.
                return _compare(res, path, out, _feeds(original, inputs) if inputs is not None else None)
            export = lepton_ir.to_onnx(m)
    except Exception as e:
        res.failure = f"import/export raised {type(e).__name__}: {e}"
        return res
    return _compare(res, path, export, _feeds(original, inputs) if inputs is not None else None)


# ------------------------------------------------------------------------------------------------
# Corpora
# ------------------------------------------------------------------------------------------------
def node_corpus(limit: int | None = None, names: Iterable[str] | None = None) -> Iterable[Callable[[], Result]]:
    wanted = set(names) if names is not None else None
    k = 0
    for case in corpus.conformance_cases():
        if wanted is not None and case.name not in wanted:
            continue
        if limit is not None and k >= limit:
            return
        k += 1
        yield lambda c=case: check_proto(c.name, c.model, c.inputs)


def data_corpus(limit: int | None = None) -> Iterable[Callable[[], Result]]:
    seen: set[str] = set()
    k = 0
    for dm in corpus.onnx_data_models():
        # Several data sets share one model; the first set is enough to compare two runtimes runs.
        if str(dm.model_path) in seen:
            continue
        seen.add(str(dm.model_path))
        if limit is not None and k >= limit:
            return
        k += 1
        yield lambda d=dm: check_file(d.name, d.model_path, d.inputs)


def real_corpus(names: Iterable[str] | None = None) -> Iterable[Callable[[], Result]]:
    for name in names if names is not None else corpus.REAL_MODELS:
        try:
            path = corpus.real_model_path(name)
        except corpus.ModelNotFetchedError:
            continue
        feeds = corpus.realistic_inputs(name)
        yield lambda n=name, p=path, f=feeds: check_file(n, p, f)
        yield lambda n=name, p=path, f=feeds: check_file(n, p, f, via_save=True)


CORPORA: dict[str, Callable[..., Iterable[Callable[[], Result]]]] = {
    "node": node_corpus, "data": data_corpus, "real": real_corpus,
}


def summarise(results: list[Result]) -> dict[str, int]:
    return {
        "total": len(results),
        "checker_orig": sum(r.checker_orig for r in results),
        "checker_export": sum(bool(r.checker_export) for r in results),
        "ort_orig": sum(r.ort_orig for r in results),
        "bit_identical": sum(bool(r.bit_identical) for r in results),
        "nondeterministic": sum(r.nondeterministic for r in results),
        "failures": sum(r.failure is not None for r in results),
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", choices=list(CORPORA), action="append",
                    help="corpus to run (repeatable; default: all)")
    ap.add_argument("--limit", type=int, default=None, help="at most this many models per corpus")
    ap.add_argument("-v", "--verbose", action="store_true", help="also list models that do not run in ORT")
    args = ap.parse_args(argv)
    chosen = args.corpus or list(CORPORA)
    bad = 0
    print(f"{'corpus':<6} {'total':>6} {'checker':>8} {'export ok':>9} {'ORT runs':>8} {'bit-same':>8} "
          f"{'random':>6} {'fail':>5} {'time':>7}")
    tables = []
    for cname in chosen:
        t0 = time.perf_counter()
        gen = CORPORA[cname](limit=args.limit) if cname != "real" else CORPORA[cname]()
        results = []
        for job in gen:
            results.append(job())
        s = summarise(results)
        dt = time.perf_counter() - t0
        tables.append((cname, results))
        print(f"{cname:<6} {s['total']:>6} {s['checker_orig']:>8} {s['checker_export']:>9} {s['ort_orig']:>8} "
              f"{s['bit_identical']:>8} {s['nondeterministic']:>6} {s['failures']:>5} {dt:>6.1f}s", flush=True)
        bad += s["failures"]
    for cname, results in tables:
        for r in results:
            if r.failure:
                print(f"FAIL {cname}/{r.name}: {r.failure}")
            elif r.nondeterministic:
                print(f"random {cname}/{r.name}: original differs from itself run to run; not compared")
            elif args.verbose and r.note:
                print(f"skip {cname}/{r.name}: {r.note}")
    print("OK: every model that should round-trip does" if not bad else f"{bad} model(s) failed to round-trip")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
