"""Must-show 1 of issue #16: the DADS minimum cut equals exhaustive search over every valid cut.

    python bench/split_optimality.py [--random N] [--trials T]

Valid cut: an edge set of main-graph nodes closed under predecessors (no tensor goes back from
the cloud to the edge); `lepton_ir.cut.valid_cuts` enumerates all of them. Instances:
* N random DAGs of up to 20 compute nodes from the property harness
  (`lepton_ir.testing.strategies.onnx_models(max_nodes=20)`, static shapes), random per-node costs,
  compression none/fp16/int8 drawn at random;
* real models small enough to enumerate (digits CNN, silero-vad-ifless, magika's 50-node prefix up
  to its first Conv, and whole magika), T random cost draws each, plus the measured profile when
  the profile database has it;
each at 1, 10, 100 and 1000 Mbit/s (RTT drawn from 0, 0.1, 1, 5 ms). Prints per source: instances,
valid cuts enumerated (min/median/max), how many DADS cuts equal the exhaustive optimum, and the
time of both. Writes bench/results/split_optimality.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import lepton_ir
from lepton_ir.cut import Compression, Link, NodeCosts, dads_cut, exhaustive_cut

RESULTS = Path(__file__).resolve().parent / "results" / "split_optimality.json"
BANDWIDTHS = (1, 10, 100, 1000)


def random_costs(n: int, rng: np.random.Generator) -> NodeCosts:
    # Log-uniform: cloud 0.1 us .. 1 ms a node, the edge 0.1x .. 100x that, so edge-only, cloud-only
    # and true splits all occur at 1..1000 Mbit/s on the harness's small tensors.
    cloud = {i: float(10 ** rng.uniform(-4, 0)) for i in range(n)}
    edge = {i: float(cloud[i] * 10 ** rng.uniform(-1, 2)) for i in range(n)}
    return NodeCosts(edge, cloud, float(rng.uniform(0, 0.2)), float(rng.uniform(0, 0.2)))


class Tally:
    def __init__(self) -> None:
        self.instances = self.agree = 0
        self.cuts: list[int] = []
        self.nodes: list[int] = []
        self.t_dads = self.t_exh = 0.0
        self.kinds: dict[str, int] = {}

    def check(self, view, n, costs, rtt, comp=Compression()) -> None:
        for bw in BANDWIDTHS:
            link = Link.mbit(bw, rtt)
            t0 = time.perf_counter()
            d = dads_cut(view, costs, link, comp)
            t1 = time.perf_counter()
            e, k = exhaustive_cut(view, costs, link, comp)
            t2 = time.perf_counter()
            self.t_dads += t1 - t0
            self.t_exh += t2 - t1
            self.instances += 1
            self.agree += d.latency_ms == e.latency_ms
            self.cuts.append(k)
            self.nodes.append(n)
            self.kinds[d.kind] = self.kinds.get(d.kind, 0) + 1
            if d.latency_ms != e.latency_ms:
                print(f"MISMATCH at {bw} Mbit/s: dads {d.describe()} vs exhaustive {e.describe()}", file=sys.stderr)

    def row(self, name: str) -> dict:
        return {"source": name, "instances": self.instances, "agree": self.agree,
                "nodes": [min(self.nodes), max(self.nodes)] if self.nodes else None,
                "valid_cuts_min": min(self.cuts) if self.cuts else 0,
                "valid_cuts_median": statistics.median(self.cuts) if self.cuts else 0,
                "valid_cuts_max": max(self.cuts) if self.cuts else 0, "kinds": self.kinds,
                "dads_ms_per_cut": 1e3 * self.t_dads / max(1, self.instances),
                "exhaustive_ms_per_cut": 1e3 * self.t_exh / max(1, self.instances)}


def random_dags(n: int) -> Tally:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from lepton_ir.testing.strategies import onnx_models

    tally = Tally()

    @settings(max_examples=n, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(proto=onnx_models(max_nodes=20, symbolic_dims=False), seed=st.integers(0, 2**32 - 1),
           rtt=st.sampled_from([0.0, 0.1, 1.0, 5.0]), comp=st.sampled_from(["none", "fp16", "int8"]))
    def run(proto, seed, rtt, comp):
        model = lepton_ir.load(proto)
        view = lepton_ir.weighted_view(model)
        rng = np.random.default_rng(seed)
        tally.check(view, len(model.graph), random_costs(len(model.graph), rng), rtt,
                    Compression(comp, float(rng.uniform(0, 5)), float(rng.uniform(0, 5))))

    run()
    return tally


def real_models() -> dict:
    from lepton_ir.testing import corpus
    from lepton_passes import PassManager

    out = {"digits": (lepton_ir.load(corpus.digits_model_path()), {"image": [1, 1, 8, 8]})}
    try:
        out["silero-vad-ifless"] = (lepton_ir.load(corpus.real_model_path("silero-vad-ifless")),
                                    {"input": [1, 512], "state": [2, 1, 128]})
        mg = lepton_ir.load(corpus.real_model_path("magika"))
        lepton_ir.pin_input_shapes(mg, {"bytes": [1, 2048]})
        PassManager("canonicalize", verify_each=False).run(mg)
        out["magika"] = (mg, None)
        conv = next(n for n in mg.graph if n.op_type == "Conv")
        out["magika-prefix"] = (lepton_ir.extract(mg, ["bytes"], [conv.outputs[0].name]), None)
    except FileNotFoundError as e:
        print(f"skipping real models: {e}", file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--random", type=int, default=100, help="random DAGs")
    ap.add_argument("--trials", type=int, default=10, help="random cost draws per real model")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    rows = []
    t = random_dags(args.random)
    rows.append(t.row(f"random DAGs (harness, max_nodes=20) x{args.random}"))
    rng = np.random.default_rng(0)
    for name, (model, shapes) in real_models().items():
        view = lepton_ir.weighted_view(model, shapes)
        n = len(model.graph)
        t = Tally()
        for k in range(args.trials):
            t.check(view, n, random_costs(n, rng), [0.0, 0.1, 1.0, 5.0][k % 4])
        rows.append(t.row(name))
    print(f"{'source':<42} {'nodes':>7} {'instances':>9} {'agree':>6} {'valid cuts min/med/max':>24} "
          f"{'dads ms':>8} {'exh. ms':>8}")
    for r in rows:
        cuts = f"{r['valid_cuts_min']}/{r['valid_cuts_median']:g}/{r['valid_cuts_max']}"
        nodes = f"{r['nodes'][0]}-{r['nodes'][1]}" if r["nodes"] else "-"
        print(f"{r['source']:<42} {nodes:>7} {r['instances']:>9} {r['agree']:>6} {cuts:>24} "
              f"{r['dads_ms_per_cut']:>8.2f} {r['exhaustive_ms_per_cut']:>8.2f}")
        print(f"{'':<42} cut kinds chosen: {r['kinds']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
