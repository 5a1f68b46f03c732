"""The split backend: options, the profile database, and the artifact it writes (no device needed:
the profile database is filled beforehand, so nothing is measured; tvm-arm only cross-compiles)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lepton
import lepton_ir
from lepton_backends import get_backend
from lepton_backends.errors import BackendOptionError
from lepton_backends.split import (CloudTimer, EdgeTimer, ProfileDB, SplitOptions, codec_models, model_key,
                                   node_models, overhead_model, parse_bandwidth, parse_duration_ms, parse_spec,
                                   select_cut, split_models)
from lepton_ir.cut import Link, NodeCosts, dads_cut, evaluate
from lepton_ir.reference import random_inputs, run_ort
from lepton_ir.testing import corpus


def test_options_read_as_the_issue_spells_them():
    be = get_backend("split")
    name, opts = parse_spec("split{edge=cortex-a72,cloud=native,bandwidth=20mbit,rtt=20ms}")
    assert name == "split"
    o = be.parse_options(opts)
    assert (o.edge, o.cloud, o.bandwidth, o.rtt, o.compress) == ("cortex-a72", "native", 20e6, 20.0, "none")
    assert str(o) == "split{edge=cortex-a72,cloud=native,bandwidth=20mbit,rtt=20ms}"
    assert str(be.parse_options(dict(parse_spec(str(o))[1]))) == str(o)
    assert parse_bandwidth("1gbit") == 1e9 and parse_bandwidth("500kbit") == 5e5 and parse_bandwidth(20) == 20e6
    assert parse_duration_ms("0.02s") == 20.0 and parse_duration_ms("500us") == 0.5
    with pytest.raises(BackendOptionError, match="bandwidth"):
        be.parse_options({"bandwidth": "fast"})
    with pytest.raises(BackendOptionError, match="compress"):
        be.parse_options({"compress": "zip"})
    with pytest.raises(BackendOptionError, match="did you mean"):
        be.parse_options({"bandwith": "20mbit"})
    assert dataclass_frozen(SplitOptions)


def dataclass_frozen(cls) -> bool:
    import dataclasses

    return dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen


def test_profile_db_is_atomic_and_merges(tmp_path):
    a = ProfileDB({"side": "edge", "t": 1}, tmp_path)
    b = ProfileDB({"side": "edge", "t": 1}, tmp_path)
    a.put("k1", {"ms": 1.0})
    a.save()
    b.put("k2", {"ms": 2.0})
    b.save()  # merges what a wrote meanwhile
    c = ProfileDB({"side": "edge", "t": 1}, tmp_path)
    assert c.get("k1") == {"ms": 1.0} and c.get("k2") == {"ms": 2.0}
    assert [p.name for p in tmp_path.glob("*.json")] == [f"{a.hash}.json"]
    assert not list(tmp_path.glob("*.tmp"))
    assert ProfileDB({"side": "cloud", "t": 1}, tmp_path).hash != a.hash


def _digits():
    m = lepton_ir.load(corpus.digits_model_path())
    lepton_ir.pin_input_shapes(m, {"image": [1, 1, 8, 8]})
    return m


def _fill_db(model, tmp_path, edge_ms, cloud_ms, opts):
    """Write the records the profiler would have measured (keys as it computes them)."""
    e, c = EdgeTimer(opts.edge, opts.edge_rpc, 1, tmp_path), CloudTimer(opts.cloud, 1, tmp_path)
    for db, per, call in ((e.db, edge_ms, 0.01), (c.db, cloud_ms, 0.001)):
        db.put(model_key(overhead_model()), {"ms": call})
        for i, m in enumerate(node_models(model)):
            if m is not None:
                db.put(model_key(m), {"ms": per(i) + call})
        for kind in ("int8", "fp16"):
            enc, dec = codec_models(kind)
            db.put(model_key(enc if db is e.db else dec), {"ms": call + 0.5})
        db.save()


@pytest.fixture
def digits_db(tmp_path, monkeypatch):
    monkeypatch.setenv("LEPTON_PROFILE_CACHE", str(tmp_path / "profiles"))
    monkeypatch.setenv("LEPTON_NO_PROGRESS", "1")
    model = _digits()
    # Edge: the convs slow, the rest cheap; cloud 10x faster everywhere.
    edge = lambda i: [0.2, 0.3, 0.05, 4.0, 0.07, 0.17, 0.04, 0.06][i]  # noqa: E731
    _fill_db(model, tmp_path / "profiles", edge, lambda i: edge(i) / 10, SplitOptions())
    return model


def test_split_artifact_has_a_pair_per_cut_and_the_table(digits_db, tmp_path):
    out = tmp_path / "out"
    lepton.optimize(digits_db, passes="", backend="split", output=out, bandwidth="20mbit", rtt="1ms")
    man = json.loads((out / "manifest.json").read_text())
    plan = man["extra"]["split"]
    assert plan["options"] == "split{edge=cortex-a72,cloud=native,bandwidth=20mbit,rtt=1ms}"
    assert [r["bandwidth"] for r in plan["table"]][:3] == ["1mbit", "2mbit", "5mbit"]
    assert "edge-only" in plan["cuts"] and plan["cuts"]["edge-only"]["edge"] == "cuts/edge-only/edge"
    for row in plan["table"]:
        assert row["cut"] in plan["cuts"]
    # Every stage of the top manifest belongs to the chosen cut and names the table.
    chosen = plan["cuts"][plan["chosen"]]
    for st in man["stages"]:
        assert st["dir"].startswith(f"cuts/{plan['chosen']}/")
        assert st["extra"]["split"]["cut"] == plan["chosen"]
        assert st["device"] == ("remote" if st["backend"] == "tvm-arm" else "host")
    # Nothing was measured: every figure came from the database.
    assert plan["profile"]["edge_ms"]["3"] == pytest.approx(4.0)
    # Each cut's cloud side is a complete artifact that runs here.
    x = random_inputs(digits_db, seed=1)
    ref = run_ort(digits_db, x)
    for cid, c in plan["cuts"].items():
        if c["cloud"] and not c["edge"]:
            got = lepton.load(out / c["cloud"]).run(x)
            np.testing.assert_allclose(got["logits"], ref["logits"] if isinstance(ref, dict) else ref[0], rtol=1e-4, atol=1e-4)
    row = select_cut(man, 15e6)
    assert row["bandwidth"] == "20mbit"


def test_chosen_cut_is_a_split_when_the_link_is_cheap_enough(digits_db, tmp_path):
    out = tmp_path / "out"
    lepton.optimize(digits_db, passes="", backend="split", output=out, bandwidth="1gbit", rtt="0.5ms")
    man = json.loads((out / "manifest.json").read_text())
    plan = man["extra"]["split"]
    kinds = {r["kind"] for r in plan["table"]}
    assert kinds <= {"edge-only", "cloud-only", "split"}
    # Slow edge convs, cheap link: the 1 Gbit/s cut runs conv2 in the cloud.
    row = select_cut(man, 1e9)
    assert 3 in row["cloud_nodes"]


@pytest.mark.parametrize("kind", ["none", "fp16", "int8"])
def test_head_and_tail_compute_the_model(kind):
    model = _digits()
    view = lepton_ir.weighted_view(model)
    costs = NodeCosts({i: 1.0 for i in range(8)}, {i: 0.1 for i in range(8)})
    x = random_inputs(model, seed=3)
    ref = run_ort(model, x)
    ref = ref["logits"] if isinstance(ref, dict) else ref[0]
    for k in range(1, 8):
        cut = evaluate(view, range(k), costs, Link.mbit(10))
        head, tail = split_models(model, cut, kind)
        mid = run_ort(head, x)
        mid = mid if isinstance(mid, dict) else dict(zip([o.name for o in head.graph.outputs], mid))
        feed = {i.name: (x | mid)[i.name] for i in tail.graph.inputs}
        out = run_ort(tail, feed)
        out = out["logits"] if isinstance(out, dict) else out[0]
        tol = {"none": 1e-5, "fp16": 1e-2, "int8": 0.5}[kind]
        np.testing.assert_allclose(out, ref, rtol=tol, atol=tol)
        if kind != "none" and cut.uplink:
            assert any(o.name.endswith("." + kind) for o in head.graph.outputs)


def test_cli_backend_spec_with_braces(digits_db, tmp_path):
    src = tmp_path / "d.onnx"
    lepton_ir.save(digits_db, src)
    out = tmp_path / "o"
    r = subprocess.run([sys.executable, "-m", "lepton.cli", str(src), "--passes", "",
                        "--backend", "split{bandwidth=5mbit,rtt=2ms}", "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    man = json.loads((out / "manifest.json").read_text())
    assert man["extra"]["split"]["options"] == "split{edge=cortex-a72,cloud=native,bandwidth=5mbit,rtt=2ms}"


class _FakeTimer:
    """A side that 'measures' by op type, counting calls (no device, no compile)."""

    def __init__(self, side, folder, ms):
        self.db = ProfileDB({"side": side, "fake": True}, folder)
        self.ms, self.calls = ms, 0

    def time(self, model, feeds):
        self.calls += 1
        for name in (i.name for i in model.graph.inputs):
            assert name in feeds  # fed recorded values
        return {"ms": self.ms(model)}

    def close(self):
        pass


def test_profile_measures_once_then_reuses(tmp_path, capsys, monkeypatch):
    from lepton_backends.split import profile_model

    monkeypatch.delenv("LEPTON_NO_PROGRESS", raising=False)
    model = _digits()
    cost = lambda m: 0.5 if len(m.graph) == 1 and m.graph.first().op_type == "Add" else 2.0  # noqa: E731
    runs = []
    for _ in range(2):
        e, c = _FakeTimer("edge", tmp_path, cost), _FakeTimer("cloud", tmp_path, lambda m: 0.1)
        p = profile_model(model, SplitOptions(), edge=e, cloud=c, codecs=["int8"])
        runs.append((e.calls, c.calls, p))
    (e1, c1, p1), (e2, c2, p2) = runs
    assert (e1, c1) == (10, 10) and (e2, c2) == (0, 0)  # 8 nodes + overhead + codec, then nothing
    assert p1.edge_ms == p2.edge_ms and p2.reused == 20 and p2.measured == 0
    # The call overhead (the x+1 model) is subtracted from every node and kept apart.
    assert p1.edge_call_ms == 0.5 and p1.edge_ms[0] == pytest.approx(1.5)
    assert "split: profiling edge [1/8] node 0 Conv" in capsys.readouterr().err


def test_default_pipeline_on_a_symbolic_model(tmp_path, monkeypatch):
    """The driver's path: canonicalize,fuse on the symbolic model, then the backend pins the batch
    (fused ops lowered, pinned, fused again) and profiles; timers faked (no device)."""
    import lepton_backends.split as split

    monkeypatch.setenv("LEPTON_PROFILE_CACHE", str(tmp_path / "p"))
    monkeypatch.setenv("LEPTON_NO_PROGRESS", "1")
    monkeypatch.setattr(split.EdgeTimer, "time", lambda self, m, f: {"ms": 0.5 if m.graph.first().domain else 0.01})
    monkeypatch.setattr(split.CloudTimer, "time", lambda self, m, f: {"ms": 0.01})
    out = tmp_path / "o"
    with pytest.warns(UserWarning, match="symbolic input dims set to 1"):
        lepton.optimize(corpus.digits_model_path(), backend="split", output=out, bandwidth="1gbit", rtt="0.1ms")
    man = json.loads((out / "manifest.json").read_text())
    plan = man["extra"]["split"]
    assert plan["chosen"] == "cloud-only" and "edge-only" in plan["cuts"]
    assert man["stages"][0]["dir"] == "cuts/cloud-only/cloud"
    x = random_inputs(lepton_ir.load(corpus.digits_model_path()), seed=0)
    x = {"image": x["image"][:1]}
    got = lepton.load(out / "cuts/cloud-only/cloud").run(x)
    ref = run_ort(corpus.digits_model_path(), x)
    np.testing.assert_allclose(got["logits"], ref["logits"] if isinstance(ref, dict) else ref[0], rtol=1e-4, atol=1e-4)
