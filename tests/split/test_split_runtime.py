"""The edge runtime of a split artifact end to end (issue #16): the head on the emulated Cortex-A72
over TVM RPC, the tail on `lepton-serve` inside a network namespace whose loopback is shaped by a
real `tc tbf` qdisc; outputs checked against ONNX Runtime on the original model.

The digits artifact is compiled from a profile database filled beforehand (nothing is measured),
with figures chosen so that its table holds a true split (the convolutions on the edge, the Gemm
in the cloud) from 20 Mbit/s up and edge-only at 10 Mbit/s and below: the runtime must move
between them when the link's rate changes. The measured link only enters through what the
shaped link guarantees (a padded probe cannot cross a 5 Mbit/s bucket faster than its rate).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lepton
import lepton_ir
from lepton.split_runtime import ShapedLink, SplitRuntime, SplitRuntimeError, read_plan
from lepton_backends.split import (CloudTimer, EdgeTimer, SplitOptions, codec_models, model_key, node_models,
                                   overhead_model)
from lepton_ir.reference import ort_session, run_ort
from lepton_ir.testing import corpus

pytestmark = pytest.mark.arm
PORT = 9311  # this file's own emulator port (tests/device uses its own)
RTOL, ATOL = 1e-3, 1e-4


def _need_link() -> None:
    why = ShapedLink.available()
    if why:
        pytest.skip(f"a shaped link {why}")


@pytest.fixture(scope="module")
def edge():
    if shutil.which("qemu-aarch64") is None or shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("needs qemu-user and the aarch64 cross compiler (lepton-device install-host-deps)")
    from lepton.device import EmulatorLease

    with EmulatorLease(port=PORT) as (host, port):
        yield f"{host}:{port}"


# Raw digits nodes: Conv, BN, Relu, Conv, Relu, MaxPool, Flatten, Gemm. The edge is cheap on the
# first seven and slow on the Gemm; the cloud the other way round: the best cut sends `flat`
# (1024 B) when the link is fast enough, else everything stays on the edge.
EDGE_MS = [0.01] * 7 + [0.6]
CLOUD_MS = [1.0] * 7 + [0.001]


def _fill_db(model, folder: Path) -> None:
    """The records the profiler would have written (keys as it computes them)."""
    opts = SplitOptions()
    e, c = EdgeTimer(opts.edge, opts.edge_rpc, 1, folder), CloudTimer(opts.cloud, 1, folder)
    for db, per, call in ((e.db, EDGE_MS, 0.01), (c.db, CLOUD_MS, 0.001)):
        db.put(model_key(overhead_model()), {"ms": call})
        for i, m in enumerate(node_models(model)):
            if m is not None:
                db.put(model_key(m), {"ms": per[i] + call})
        for kind in ("int8", "fp16"):
            enc, dec = codec_models(kind)
            db.put(model_key(enc if db is e.db else dec), {"ms": call + 0.5})
        db.save()


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """(artifact folder, input, ORT's output) for the digits CNN split as described above."""
    tmp = tmp_path_factory.mktemp("split-runtime")
    model = lepton_ir.load(corpus.digits_model_path())
    lepton_ir.pin_input_shapes(model, {"image": [1, 1, 8, 8]})
    _fill_db(model, tmp / "profiles")
    old = {k: os.environ.get(k) for k in ("LEPTON_PROFILE_CACHE", "LEPTON_NO_PROGRESS")}
    os.environ.update(LEPTON_PROFILE_CACHE=str(tmp / "profiles"), LEPTON_NO_PROGRESS="1")
    try:
        lepton.optimize(model, passes="", backend="split", output=tmp / "out", bandwidth="100mbit", rtt="0.1ms")
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    x = {"image": np.random.default_rng(7).standard_normal([1, 1, 8, 8]).astype(np.float32)}
    ref = run_ort(ort_session(corpus.digits_model_path()), x)[0]
    return tmp / "out", x, ref


def _split_cut(plan):
    return next(k for k, c in plan["cuts"].items() if c["kind"] == "split")


def test_the_table_has_a_split_fast_and_edge_only_slow(digits):
    plan = read_plan(digits[0])
    rows = {r["bandwidth"]: r["cut"] for r in plan["table"]}
    assert rows["5mbit"] == rows["10mbit"] == "edge-only"
    split = _split_cut(plan)
    assert rows["20mbit"] == rows["100mbit"] == rows["1gbit"] == split
    assert plan["cuts"][split]["uplink"] == ["flat"] and plan["cuts"][split]["edge_nodes"] == list(range(7))


def test_outputs_equal_ort_through_a_shaped_link(digits, edge):
    _need_link()
    art, x, ref = digits
    with ShapedLink(20e6, delay_ms=2.0) as link:
        _, url = link.serve(art)
        for cut in ("edge-only", "split", None):
            with SplitRuntime(art, url, rpc=edge, connect=link.connect, adapt=cut is None,
                              cut=_split_cut(read_plan(art)) if cut == "split" else cut) as rt:
                plan_cut = rt.cut
                for _ in range(3):
                    out = rt.run(x)
                    np.testing.assert_allclose(out["logits"], ref, rtol=RTOL, atol=ATOL)
                for r in rt.history:
                    assert r.cut == plan_cut and r.fallback is None
                    if r.cut != "edge-only":
                        # The transport's delay is on every exchange; the head's 1024 B went up.
                        assert r.link_ms >= 2.0 and r.up_bytes > 1024
                    else:
                        assert r.up_bytes == 0 and r.edge_ms > 0


def test_server_killed_mid_run_falls_back_or_fails_clearly(digits, edge):
    """The server killed between requests: the runtime says so in one line and answers from the
    edge-only cut (same outputs); with fallback=False it raises one line. The two runtimes run one
    after the other: a plain TVM RPC server serves one session at a time, so two open at once hang."""
    _need_link()
    art, x, ref = digits
    lines = []
    with ShapedLink(100e6) as link:
        proc, url = link.serve(art)
        with SplitRuntime(art, url, rpc=edge, connect=link.connect, fallback=False, adapt=False) as strict:
            np.testing.assert_allclose(strict.run(x)["logits"], ref, rtol=RTOL, atol=ATOL)
        with SplitRuntime(art, url, rpc=edge, connect=link.connect, log=lines.append) as rt:
            for _ in range(2):
                np.testing.assert_allclose(rt.run(x)["logits"], ref, rtol=RTOL, atol=ATOL)
            assert rt.history[-1].cut != "edge-only"
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            out = rt.run(x)  # the cloud is gone mid-run: the whole model on the edge, same answer
            np.testing.assert_allclose(out["logits"], ref, rtol=RTOL, atol=ATOL)
            assert rt.history[-1].cut == "edge-only" and rt.history[-1].fallback
            assert len(lines) == 1 and "edge-only" in lines[0] and "\n" not in lines[0]
            np.testing.assert_allclose(rt.run(x)["logits"], ref, rtol=RTOL, atol=ATOL)  # stays there
        with pytest.raises(SplitRuntimeError) as e:
            with SplitRuntime(art, url, rpc=edge, connect=link.connect, fallback=False, adapt=False,
                              cut=_split_cut(read_plan(art))) as strict:
                strict.run(x)
        assert "\n" not in str(e.value) and "fallback is off" in str(e.value), str(e.value)


def test_cut_moves_within_5_requests_after_a_step_from_100_to_5_mbit(digits, edge):
    _need_link()
    art, x, ref = digits
    with ShapedLink(100e6) as link:
        _, url = link.serve(art)
        with SplitRuntime(art, url, rpc=edge, connect=link.connect) as rt:
            split = _split_cut(rt.plan)
            for _ in range(12):  # settle: on the split, and a bandwidth sample just taken (worst case)
                rt.run(x)
                if rt.cut == split and rt.history[-1].sample:
                    break
            assert rt.cut == split
            link.set_rate(5e6)
            after = []
            for _ in range(6):
                np.testing.assert_allclose(rt.run(x)["logits"], ref, rtol=RTOL, atol=ATOL)
                after.append(rt.history[-1])
            first = next((k for k, r in enumerate(after, 1) if r.cut == "edge-only"), None)
            assert first is not None and first <= 5, [(r.cut, r.padded, round(r.link_ms, 2)) for r in after]
            # What moved it: a padded exchange that the 5 Mbit/s bucket held for its bytes' time.
            probes = [r for r in after if r.sample]
            assert probes and all(r.link_ms >= (r.up_bytes - 1600) * 8 / 5e6 * 1e3 for r in probes)


def _cli(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import sys; from lepton.cli import run_main; sys.exit(run_main())",
                           *argv], capture_output=True, text=True, timeout=timeout)


def test_lepton_run_cloud(digits, edge, tmp_path):
    art, x, _ = digits
    np.savez(tmp_path / "in.npz", **x)
    srv = subprocess.Popen([sys.executable, "-m", "lepton.serve", str(art), "--port", "0"],
                           stderr=subprocess.PIPE, text=True)
    try:
        url = None
        for line in srv.stderr:
            if "listening on " in line:
                url = line.split("listening on ", 1)[1].strip()
                break
        assert url
        r = _cli(str(art), "--cloud", url, "--rpc", edge, "--inputs", str(tmp_path / "in.npz"),
                 "--compare", str(corpus.digits_model_path()), "--bench", "3", "--warmup", "1")
        assert r.returncode == 0, r.stderr
        assert "compare with ONNX Runtime: logits" in r.stdout and "cut " in r.stderr
    finally:
        srv.kill()
        srv.wait(10)
    # No server: one line saying so, the whole model on the edge, the right answer.
    r = _cli(str(art), "--cloud", url, "--rpc", edge, "--inputs", str(tmp_path / "in.npz"),
             "--compare", str(corpus.digits_model_path()))
    assert r.returncode == 0, r.stderr
    assert "compare with ONNX Runtime: logits" in r.stdout
    said = [ln for ln in r.stderr.splitlines() if "unreachable" in ln or "failed" in ln]
    assert len(said) == 1 and "edge-only" in said[0] and "Traceback" not in r.stderr
    # Not a split artifact / a bad URL: one line, non-zero.
    r = _cli(str(art / "cuts" / "edge-only" / "edge"), "--cloud", url, "--rpc", edge)
    assert r.returncode != 0 and "not a split artifact" in r.stderr and "Traceback" not in r.stderr
    r = _cli(str(art), "--cloud", "ftp://x", "--rpc", edge)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


@pytest.mark.slow
def test_magika_through_a_shaped_link(request, edge, tmp_path):
    """magika (its real profiles: the cut is cloud-only at every bandwidth) equals ORT through the
    link on both of its cuts. Slow: compiling it and one edge-only run take minutes."""
    if "slow" not in (request.config.getoption("-m") or ""):
        pytest.skip("magika through the link takes minutes; run with -m slow (bench/split_link.py runs it too)")
    _need_link()
    path = corpus.require_real_model("magika")
    out = tmp_path / "magika"
    lepton.optimize(str(path), backend="split", output=out, bandwidth="20mbit", rtt="5ms",
                    **{"edge-rpc": os.environ.get("LEPTON_SPLIT_PROFILE_RPC", "127.0.0.1:9098")})
    x = {"bytes": np.random.default_rng(0).integers(0, 257, [1, 2048]).astype(np.int32)}
    ref = run_ort(ort_session(path), x)
    with ShapedLink(20e6, delay_ms=5.0) as link:
        _, url = link.serve(out)
        for cut in ("cloud-only", "edge-only"):
            with SplitRuntime(out, url, rpc=edge, connect=link.connect, cut=cut, adapt=False) as rt:
                got = rt.run(x)
                for a, name in zip(ref, rt.plan["outputs"]):
                    np.testing.assert_allclose(got[name], a, rtol=RTOL, atol=ATOL)
