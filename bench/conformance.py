"""ONNX node conformance through each execution path; writes docs/conformance.md.

    python bench/conformance.py [--paths ort,lepton-onnx,tvm,lepton-tvm-cpu,lepton-tvm-cpu-fallback]
                                [--jobs 2] [--limit N]
                                [--fresh [PATHS]] [--only-failed] [--match REGEX]

Paths, each judged against the expected outputs shipped with the case (onnx's BackendTest
tolerances: rtol 1e-3, atol 1e-7, or the case's own):
- ort:            ONNX Runtime on the case as shipped (the reference everyone compares with);
- lepton-onnx:    lepton.onnx_backend: import -> canonicalize -> `onnx` backend -> ONNX Runtime;
- tvm:            TVM's own importer alone: relax.frontend.onnx.from_onnx -> tvm.compile -> VM;
- lepton-tvm-cpu: lepton.onnx_backend with the `tvm-cpu` backend (when registered), strict:
                  `fallback=False`, so a case passes only when TVM compiles all of it;
- lepton-tvm-cpu-fallback: the same with `fallback=True` (the backend's default): what TVM cannot
                  compile runs on ONNX Runtime stages of a multi-stage artifact. A failure's reason
                  names the artifact's stages (`[stages: tvm-cpu:N,onnx:M]`, N/M nodes) when it built.
Each case runs in a worker process (a crash counts as a failure, not as the end of the run).
Results are cached per path in bench/results/conformance-<path>.json; --fresh ignores the cache
(--fresh PATH[,PATH] only that of the paths named, reusing the others' cached results in the doc).
--only-failed reruns only the cached failures of each path (and the cases missing from the cache:
the cache is written every 50 cases, so this resumes an interrupted sweep) and --match only the
cases whose name matches a regex; both merge the new results into the cache (and the doc) instead of replacing it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "conformance.md"

_CASES: dict | None = None


def _cases() -> dict:
    global _CASES
    if _CASES is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from lepton_ir.testing.corpus import conformance_cases, conformance_tolerances

            tols = conformance_tolerances()
            _CASES = {name: (model, inputs, outputs, tols.get(name, (1e-3, 1e-7)))
                      for name, model, inputs, outputs in conformance_cases()}
    return _CASES


def _close(ref, got, rtol: float, atol: float) -> bool:
    import numpy as np

    if isinstance(ref, list):
        return isinstance(got, list) and len(ref) == len(got) and all(_close(a, b, rtol, atol) for a, b in zip(ref, got))
    if ref is None or got is None:
        return ref is None and got is None
    a, b = np.asarray(ref), np.asarray(got)
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "fc":
        return bool(np.allclose(b.astype(a.dtype), a, rtol=rtol, atol=atol, equal_nan=True))
    if a.dtype == object or b.dtype == object:
        return a.tolist() == b.tolist()
    return bool(np.array_equal(a, b))


def _run_path(path: str, model, inputs):
    import numpy as np

    inits = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    if path == "ort":
        from lepton_ir.reference import feed_for, ort_session

        # The session's own outputs, not run_ort's: run_ort makes every output an ndarray, which
        # turns a sequence output (a list of arrays) into a stacked array or fails on ragged ones.
        sess = ort_session(model, optimize=True)
        return sess.run(None, feed_for(sess, dict(zip(names, inputs))))
    if path == "tvm":
        import tvm
        from tvm import relax
        from tvm.relax.frontend.onnx import from_onnx

        shapes = {n: list(np.shape(x)) for n, x in zip(names, inputs) if isinstance(x, np.ndarray)}
        mod = from_onnx(model, shape_dict=shapes, keep_params_in_input=False)
        ex = tvm.compile(mod, target="llvm")
        vm = relax.VirtualMachine(ex, tvm.cpu())
        res = vm["main"](*[tvm.runtime.tensor(np.asarray(x)) for x in inputs])
        flat = list(res) if isinstance(res, (tuple, list)) or type(res).__name__ == "Array" else [res]
        return [r.numpy() for r in flat]
    from lepton.onnx_backend import backend_for

    global _LAST_REP
    backend, options = _LEPTON_PATHS.get(path, (path.removeprefix("lepton-"), {}))
    _LAST_REP = rep = backend_for(backend, "canonicalize", options=options).prepare(model)
    return list(rep.run(list(inputs)))


#: Lepton paths whose name is not just `lepton-<backend>`: (backend, backend options)
_LEPTON_PATHS: dict[str, tuple[str, dict]] = {
    "lepton-tvm-cpu": ("tvm-cpu", {"fallback": False}),
    "lepton-tvm-cpu-fallback": ("tvm-cpu", {"fallback": True}),
}
_LAST_REP = None  # the rep of the case being run (a Lepton path), to describe its artifact on failure


def _stages_of(rep) -> str:
    """` [stages: tvm-cpu:3,onnx:1]` (backend:nodes of each stage) of the artifact(s) a rep built."""
    if rep is None:
        return ""
    runners = [rep.runner] if getattr(rep, "runner", None) is not None else [r for r, _ in rep.compiled.values()]
    shown = []
    for r in runners:
        stages = (getattr(r, "manifest", None) or {}).get("stages") or [getattr(r, "manifest", None) or {}]
        shown.append(",".join(f"{st.get('backend', '?')}:{st.get('nodes', '?')}" for st in stages))
    return f" [stages: {'; '.join(shown)}]" if shown else ""


def _one(args: tuple[str, str]) -> tuple[str, bool, str]:
    name, ok, why = _one_case(args)
    if not ok and args[0].endswith("-fallback"):
        why += _stages_of(_LAST_REP)
    return name, ok, why


def _one_case(args: tuple[str, str]) -> tuple[str, bool, str]:
    global _LAST_REP
    path, name = args
    _LAST_REP = None
    model, inputs, outputs, (rtol, atol) = _cases()[name]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = _run_path(path, model, inputs)
        if len(got) != len(outputs):
            return name, False, f"{len(got)} outputs, expected {len(outputs)}"
        for r, g in zip(outputs, got):
            if not _close(r, g, rtol, atol):
                return name, False, "wrong values"
        return name, True, ""
    except BaseException as e:  # any failure of the path is a failed case, with its reason
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return name, False, f"{type(e).__name__}: {msg[:160]}"


def _sweep(path: str, names: list[str], jobs: int, base: dict[str, list] | None = None) -> dict[str, list]:
    """Run `names` on `path`; merged over `base` (a partial rerun), written to the path's cache."""
    cache = RESULTS / f"conformance-{path}.json"
    t0 = time.time()
    done: dict[str, list] = dict(base or {})
    before = sum(v[0] for v in done.values())
    ctx = mp.get_context("fork")
    with ctx.Pool(jobs, maxtasksperchild=50) as pool:
        for k, (name, ok, why) in enumerate(pool.imap_unordered(_one, [(path, n) for n in names], chunksize=4), 1):
            done[name] = [ok, why]
            if k % 50 == 0:  # an interrupted sweep keeps what it ran: --only-failed resumes it
                RESULTS.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps(done, indent=0, sort_keys=True))
            if k % 100 == 0 or k == len(names):
                rate = k / (time.time() - t0)
                print(f"  {path}: {k}/{len(names)} ({sum(done[n][0] for n in names if n in done)} pass) "
                      f"{rate:.1f}/s, ETA {(len(names) - k) / rate:.0f}s", file=sys.stderr, flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(done, indent=0, sort_keys=True))
    if base:
        print(f"  {path}: reran {len(names)} cases; {before} -> {sum(v[0] for v in done.values())} pass",
              file=sys.stderr, flush=True)
    return done


_ORT_ERRORS = ("Fail", "InvalidArgument", "InvalidGraph", "RuntimeException", "NotImplemented", "NoSuchFile",
               "EPFail", "ModelLoaded", "InvalidProtobuf", "Onnxruntime")


#: (text in the reason, cause) of the fallback failures that leave no artifact
_NO_ARTIFACT = (
    ("cannot generate data", "the capability oracle cannot make sample inputs (string, sequence or optional input)"),
    ("array element with a sequence", "the capability oracle's recorded values: a sequence output as an array"),
    ("every node compiles on its own", "TVM refuses the whole model but accepts every node alone (no fallback)"),
    ("tvm-cpu: the artifact does not load", "TVM's whole-model artifact does not load (no fallback)"),
    ("does not load in its own runtime", "an ONNX Runtime stage does not load"),
    ("is not a tensor", "the artifact manifest refuses a sequence/optional input or output"),
)


def _cause(why: str) -> str:
    """What a failure of a fallback path comes from, from its reason (and the stages it names)."""
    m = re.search(r" \[stages: (.*)\]$", why)
    stages = [st.split(":")[0] for part in m.group(1).split("; ") for st in part.split(",")] if m else []
    kind = why.split(":")[0]
    if not stages:
        for text, cause in _NO_ARTIFACT:
            if text in why:
                return "no artifact: " + cause
        return "no artifact: compiling or partitioning failed"
    if "does not match" in why:
        return "a stage's input does not match what the stage before it produced (stage interface)"
    if why.startswith(("wrong values", "outputs,")) or re.match(r"\d+ outputs", why):
        if all(st != "onnx" for st in stages):
            return "wrong values: TVM compiled the whole model (no fallback stage)"
        if all(st == "onnx" for st in stages):
            return "wrong values: ONNX Runtime stages only"
        return "wrong values: multi-stage artifact (a TVM stage the oracle accepted, or a border)"
    if kind in _ORT_ERRORS or "onnxruntime" in why.lower():
        return "an ONNX Runtime stage fails to run"
    return "a stage fails to run"


def _op_of(name: str) -> str:
    model = _cases()[name][0]
    ops = [n.op_type for n in model.graph.node]
    return ops[-1] if ops else "?"


def write_doc(results: dict[str, dict[str, list]], total: int) -> str:
    ort = results.get("ort", {})
    ort_pass = {n for n, (ok, _) in ort.items() if ok}
    lines = ["# ONNX conformance through each path", "",
             "Generated by `python bench/conformance.py` (do not edit by hand). Cases: "
             f"`onnx.backend.test.case.node.collect_testcases()`, {total} with onnx 1.23.2. Each path is judged "
             "against the expected outputs shipped with the case, with onnx BackendTest's tolerances.", "",
             "Shape-determining inputs. Static compilers (TVM, like XLA) need the values that fix shapes or "
             "name axes (Reshape's shape, Reduce*'s axes, Resize's sizes/scales, Pad's pads, TopK's K, OneHot's "
             "depth, ...) at compile time, and many cases pass them as graph inputs. For backends that declare "
             "`needs_static_shape_values` (lepton-tvm-cpu), `lepton.onnx_backend` finds the inputs whose every use "
             "is such an operand, directly or through pure int arithmetic "
             "(`lepton_ir.analysis.shape_determining_inputs`), and compiles on the first `run()` with those "
             "inputs bound to the values given (`bind-inputs{values=[...]},canonicalize`, as a user would with "
             "`lepton optimize --passes`), caching one artifact per distinct bound values. An input with any other "
             "use (data) is never bound, so constant folding cannot compute a case's answer ahead of the backend.",
             "",
             "lepton-tvm-cpu is strict (`fallback=False`, `--no-fallback`): a case passes only when TVM compiles "
             "all of it. lepton-tvm-cpu-fallback is the backend's default (`fallback=True`): the nodes TVM cannot "
             "compile (the capability oracle's trial compile per node, checked against ONNX Runtime on recorded "
             "values) run on ONNX Runtime stages of a multi-stage artifact. Its failures name the artifact's stages "
             "(`[stages: tvm-cpu:N,onnx:M]`, nodes per stage) and are grouped by cause. A case whose artifact is "
             "one TVM stage got no fallback: the oracle is asked only when TVM refuses the whole model, so a model "
             "TVM compiles to wrong values fails here as it does strictly.",
             "",
             "| path | passes | of all cases | of the cases ONNX Runtime passes |", "|---|---:|---:|---:|"]
    partial = []
    for path, res in results.items():
        ok = {n for n, (p, _) in res.items() if p}
        # A sweep that was interrupted (its cache is written as it goes) counts over the cases it ran.
        base = ort_pass & set(res)
        label = path if len(res) >= total else f"{path} (partial: {len(res)} of {total} cases run)"
        if len(res) < total:
            partial.append(path)
        of_ort = f"{len(ok & base)} / {len(base)} ({100 * len(ok & base) / max(1, len(base)):.1f}%)"
        lines.append(f"| {label} | {len(ok)} | {100 * len(ok) / max(1, len(res)):.1f}% | {of_ort if ort else 'n/a'} |")
    if partial:
        lines += ["", f"Partial: {', '.join(partial)}: the sweep was stopped before the end; its columns count over "
                      "the cases it ran (`python bench/conformance.py --paths PATH --only-failed` resumes it)."]
    for path, res in results.items():
        if path == "ort":
            continue
        miss = sorted(n for n in ort_pass if n in res and not res[n][0])
        lines += ["", f"## {path}: cases ONNX Runtime passes but this path fails ({len(miss)})", ""]
        if not miss:
            lines.append("None.")
            continue
        ops = Counter(_op_of(n) for n in miss)
        lines.append("By op type: " + ", ".join(f"{op} ({k})" for op, k in ops.most_common()))
        if path.endswith("-fallback"):
            causes: dict[str, list[str]] = {}
            for n in miss:
                causes.setdefault(_cause(res[n][1] or ""), []).append(n)
            lines += ["", "By cause:", ""]
            for cause, ns in sorted(causes.items(), key=lambda kv: -len(kv[1])):
                by_op = Counter(_op_of(n) for n in ns)
                lines.append(f"- {cause} ({len(ns)}): " + ", ".join(f"{op} ({k})" for op, k in by_op.most_common()))
        lines += ["", "<details><summary>cases and reasons</summary>", ""]
        lines += [f"- `{n}`: {res[n][1] or 'failed'}" for n in miss]
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paths", default="ort,lepton-onnx,tvm,lepton-tvm-cpu,lepton-tvm-cpu-fallback")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="only the first N cases (smoke runs)")
    ap.add_argument("--fresh", nargs="?", const="*", default="",
                    help="ignore cached results: of every path, or of the comma-separated paths given "
                         "(e.g. --fresh lepton-tvm-cpu reruns that path and reuses the others' caches)")
    ap.add_argument("--no-doc", action="store_true")
    ap.add_argument("--only-failed", action="store_true",
                    help="rerun only the cases that failed in the cached results (merged into the cache)")
    ap.add_argument("--match", default="", help="rerun only the cases whose name matches this regex (merged)")
    args = ap.parse_args(argv)
    names = sorted(_cases())
    if args.limit:
        names = names[:args.limit]
    results: dict[str, dict[str, list]] = {}
    for path in args.paths.split(","):
        cache = RESULTS / f"conformance-{path}.json"
        cached = json.loads(cache.read_text()) if cache.exists() else None
        fresh = args.fresh == "*" or path in args.fresh.split(",")
        if (args.only_failed or args.match) and cached is not None and not fresh:
            subset = [n for n in names if (not args.only_failed or not cached.get(n, [False])[0])
                      and (not args.match or re.search(args.match, n))]
            results[path] = _sweep(path, subset, args.jobs, base=cached)
        elif cached is not None and not fresh and not args.limit:
            results[path] = cached
            print(f"  {path}: cached ({cache})", file=sys.stderr)
        else:
            results[path] = _sweep(path, names, args.jobs)
    doc = write_doc(results, len(names))
    if not args.no_doc and not args.limit:
        DOC.write_text(doc)
    print(doc.split("\n## ")[0])
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    sys.exit(main())
