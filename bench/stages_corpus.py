"""Stage cutting on every real model: sizes, the min-cut frontier, and chained-stage correctness.

For each real model (and the digits CNN) with its realistic inputs it prints

* nodes and activation values of the main graph, the total activation bytes (`weighted_view`
  with the input shapes pinned; sizes static inference cannot know are measured by one ONNX
  Runtime run, and their number is shown as "measured"),
* the minimum s-t cut of `weighted_view` (bytes) and the values it cuts,
* 2 and 3 stages cut at random activation values (`split_stages`, several seeds), run chained
  in ONNX Runtime: are the outputs bit-identical to the whole model's?

ONNX Runtime runs on the CPU provider with graph optimizations disabled and one thread, so the
stages and the whole model run the same kernels. Run from the repository root::

    python bench/stages_corpus.py                 # every model
    python bench/stages_corpus.py magika --seeds 5

Exit status 1 when any stage check is not bit-identical (or fails).
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import networkx as nx
import numpy as np
import onnx
import onnxruntime as ort

import lepton_ir
from lepton_ir.reference import ort_session
from lepton_ir.testing import corpus


def _session(proto: onnx.ModelProto) -> ort.InferenceSession:
    # Graph optimizations off (ort_session's default): the stages and the whole model then run the
    # very same kernels; one thread so reductions sum in one order.
    return ort_session(proto, threads=1)


def ort_run(model: lepton_ir.Model | onnx.ModelProto, feeds: dict) -> dict[str, np.ndarray]:
    proto = model if isinstance(model, onnx.ModelProto) else lepton_ir.to_onnx(model)
    sess = _session(proto)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def measured_shapes(proto: onnx.ModelProto, feeds: dict, names: list[str]) -> dict[str, list[int]]:
    """Shapes of `names` from one run of the original with them added as outputs."""
    if not names:
        return {}
    p = onnx.ModelProto()
    p.CopyFrom(proto)
    have = {o.name for o in p.graph.output}
    p.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in have)
    got = ort_run(p, feeds)
    return {n: list(got[n].shape) for n in names}


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def load(name: str) -> tuple[onnx.ModelProto, dict]:
    if name == "digits":
        proto = onnx.load(str(corpus.digits_model_path()))
        return proto, {proto.graph.input[0].name: corpus.digits_dataset("test")[0][:4]}
    return onnx.load(str(corpus.real_model_path(name))), corpus.realistic_inputs(name)


def min_cut(view: nx.DiGraph) -> tuple[int, list[str]]:
    """The min s-t cut value and the names of the values whose edges it cuts."""
    value, (src, _) = nx.minimum_cut(view, "source", "sink")
    cut = {v[1] for u in src for v in view.successors(u) if v not in src and "capacity" in view.edges[u, v]}
    order = [k[1] for k in view if isinstance(k, tuple) and k[0] == "value"]  # graph order: stable output
    return value, [n for n in order if n in cut]


def stage_check(m: lepton_ir.Model, feeds: dict, want: dict, k: int, seeds: int, name: str) -> bool:
    acts = [o.name for n in m.graph for o in n.outputs if o.name]
    outs = [o.name for o in m.graph.outputs]
    for seed in range(seeds):
        rng = random.Random(f"{name}-{k}-{seed}")
        cuts = [rng.sample(acts, min(len(acts), rng.randint(1, 4))) for _ in range(k - 1)]
        got = lepton_ir.run_stages(lepton_ir.split_stages(m, cuts), feeds, ort_run, outs)
        if not all(same_bits(got[o], want[o]) for o in outs):
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", help="model names (default: all real models and digits)")
    ap.add_argument("--seeds", type=int, default=3, help="random cuts per stage count (default 3)")
    args = ap.parse_args(argv)
    names = args.models or [*corpus.REAL_MODELS, "digits"]
    print(f"{'model':<18} {'nodes':>5} {'values':>6} {'act bytes':>11} {'measured':>8} {'min cut B':>9} "
          f"{'2 stages':>8} {'3 stages':>8}  cut values")
    bad = 0
    for name in names:
        t0 = time.perf_counter()
        try:
            proto, feeds = load(name)
        except (corpus.ModelNotFetchedError, FileNotFoundError) as e:
            print(f"{name:<18} not available: {e}")
            continue
        m = lepton_ir.load(proto)
        want = ort_run(proto, feeds)
        shapes = {k: list(v.shape) for k, v in feeds.items()}
        unsized = [n for n in lepton_ir.unsized_values(m, shapes) if n not in shapes]
        view = lepton_ir.weighted_view(m, {**shapes, **measured_shapes(proto, feeds, unsized)})
        total = sum(c for _, _, c in view.edges.data("capacity") if c is not None)
        n_values = sum(1 for k in view if isinstance(k, tuple) and k[0] == "value")
        cut, cut_values = min_cut(view)
        results = []
        for k in (2, 3):
            try:
                ok = stage_check(m, feeds, want, k, args.seeds, name)
            except Exception as e:  # noqa: BLE001 - a failing check is reported, then counted
                print(f"  {name}: {k} stages failed: {type(e).__name__}: {e}", file=sys.stderr)
                ok = False
            results.append("yes" if ok else "NO")
            bad += not ok
        shown = ", ".join(cut_values[:4]) + (f" (+{len(cut_values) - 4})" if len(cut_values) > 4 else "")
        print(f"{name:<18} {len(m.graph):>5} {n_values:>6} {total:>11} {len(unsized):>8} {cut:>9} "
              f"{results[0]:>8} {results[1]:>8}  {shown}   [{time.perf_counter() - t0:.1f} s]", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
