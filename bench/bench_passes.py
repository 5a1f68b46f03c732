"""Pass-manager overhead: `canonicalize` on generated graphs of growing size.

    python bench/bench_passes.py [--sizes 10000,25000,50000] [--repeat 3]

The graphs are ladders of element-wise ops with everything canonicalize works on mixed in: Identity
and no-op Cast nodes (remove-noops), duplicated nodes (cse), dead branches (dce) and constant
subexpressions (fold-constants). Reports seconds per 10k nodes for the whole PassManager run (verify
after each pass on, as in tests) and the slope between sizes: linear scaling keeps s/10k flat.
Writes bench/results/passes.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import lepton_ir
from lepton_passes import PassManager

ROOT = Path(__file__).resolve().parent.parent


def ladder(n_nodes: int, width: int = 16) -> onnx.ModelProto:
    """About `n_nodes` nodes: blocks of 10 nodes, 4 of which canonicalize removes or merges."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    x = "x"
    for i in range(max(1, n_nodes // 10)):
        c = f"c{i}"
        inits.append(numpy_helper.from_array(rng.uniform(0.9, 1.1, width).astype(np.float32), c))
        two = f"two{i}"
        inits.append(numpy_helper.from_array(np.array(2.0, np.float32), two))
        nodes += [
            helper.make_node("Mul", [c, two], [f"k{i}"]),              # constant subexpression: folds
            helper.make_node("Add", [x, f"k{i}"], [f"a{i}"]),
            helper.make_node("Identity", [f"a{i}"], [f"id{i}"]),       # no-op
            helper.make_node("Mul", [f"id{i}", c], [f"m{i}"]),
            helper.make_node("Mul", [f"id{i}", c], [f"m{i}_dup"]),     # duplicate: cse
            helper.make_node("Add", [f"m{i}", f"m{i}_dup"], [f"s{i}"]),
            helper.make_node("Cast", [f"s{i}"], [f"cast{i}"], to=TensorProto.FLOAT),  # no-op cast
            helper.make_node("Relu", [f"cast{i}"], [f"r{i}"]),
            helper.make_node("Neg", [f"r{i}"], [f"dead{i}"]),          # unused: dce
            helper.make_node("Tanh", [f"r{i}"], [f"t{i}"]),
        ]
        x = f"t{i}"
    graph = helper.make_graph(nodes, "ladder", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def measure(size: int, repeat: int) -> dict:
    proto = ladder(size)
    times = []
    after = 0
    for _ in range(repeat):
        model = lepton_ir.load(proto)
        t0 = time.perf_counter()
        report = PassManager("canonicalize", verify_each=True).run(model)
        times.append(time.perf_counter() - t0)
        after = report.nodes_after
    med = statistics.median(times)
    return {"nodes": len(proto.graph.node), "nodes_after": after, "seconds": med,
            "seconds_per_10k_nodes": med / len(proto.graph.node) * 1e4}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,25000,50000")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    rows = []
    print(f"{'nodes':>7} {'after':>7} {'seconds':>8} {'s/10k nodes':>12}")
    for size in map(int, args.sizes.split(",")):
        r = measure(size, args.repeat)
        rows.append(r)
        print(f"{r['nodes']:>7} {r['nodes_after']:>7} {r['seconds']:>8.2f} {r['seconds_per_10k_nodes']:>12.3f}", flush=True)
    slope = rows[-1]["seconds_per_10k_nodes"] / rows[0]["seconds_per_10k_nodes"] if len(rows) > 1 else 1.0
    print(f"s/10k at {rows[-1]['nodes']} nodes over s/10k at {rows[0]['nodes']} nodes: {slope:.2f} "
          "(1.0 = perfectly linear)")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "passes.json").write_text(json.dumps({"rows": rows, "linearity": slope}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
