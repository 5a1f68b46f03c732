"""CI's share of the fuzzing (issue #19): every target over its seeds and saved corpus, then a
short coverage-guided run (a few seconds per target) through `bench/fuzz.py`, which must report
0 findings. The long runs behind docs/hardening.md's figures are `bench/fuzz.py --seconds N`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import targets as T  # noqa: E402

REPO = T.REPO
#: Seconds of coverage-guided fuzzing per target in CI.
SMOKE_SECONDS = 3


@pytest.mark.parametrize("name", list(T.TARGETS))
def test_corpus(name: str) -> None:
    """Seeds and saved inputs: none may break the contract (native-crash reproducers are replayed
    in a child process by test_regressions.py and skipped here)."""
    seen = 0
    for label, data in T.iter_inputs(name):
        note = (T.CORPUS / name / label).with_suffix(".txt")
        if note.exists() and note.read_text().startswith("native:"):
            continue
        finding = T.classify(T.TARGETS[name], data)
        assert finding is None, f"{name}/{label}: {finding.error}\n{finding.trace}"
        seen += 1
    assert seen >= 3, f"{name}: only {seen} inputs; the seeds went missing"


def test_seeds_reach_past_the_first_check() -> None:
    """Seeds that all fail at the first validation would let the fuzzer explore nothing behind
    it: most seeds of each target must be accepted outright."""
    from lepton_ir import LeptonError

    for name, t in T.TARGETS.items():
        seeds = t.seeds()
        accepted = 0
        for s in seeds:
            try:
                t.run(s)
                accepted += 1
            except LeptonError:
                pass
        assert accepted * 2 >= len(seeds), f"{name}: only {accepted}/{len(seeds)} seeds are accepted"


def test_classify_catches_what_the_contract_forbids() -> None:
    """The judge itself: a foreign exception, a multi-line LeptonError and a hang are findings;
    a one-line LeptonError is not (a harness that cannot fail would prove nothing)."""
    from lepton_ir import LeptonError

    class Multi(LeptonError):
        def __str__(self) -> str:
            return "two\nlines"

    def boom(data: bytes) -> None:
        if data == b"k":
            raise KeyError("x")
        if data == b"m":
            raise Multi()
        if data == b"h":
            while True:
                pass
        raise LeptonError("fine")

    t = T.Target("t", "", boom, lambda: [], ())
    assert T.classify(t, b"k").kind == "exception"
    assert T.classify(t, b"m").kind == "multi-line-error"
    assert T.classify(t, b"h", time_bound=0.2).kind == "hang"
    assert T.classify(t, b"ok") is None


@pytest.mark.parametrize("name", list(T.TARGETS))
def test_short_fuzz_run(name: str, tmp_path: Path) -> None:
    """A bounded atheris run from the saved corpus: inputs are tried and none is a finding."""
    pytest.importorskip("atheris")
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "fuzz.py"), "--target", name, "--seconds",
                        str(SMOKE_SECONDS), "--save-dir", str(tmp_path / "found"), "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert out.exists(), r.stdout + r.stderr
    (res,) = json.loads(out.read_text())
    assert res["inputs"] > 50, res
    assert res["findings"] == 0, f"{r.stdout}\nreproducers in {tmp_path / 'found'}"
    assert r.returncode == 0


@pytest.mark.parametrize("pipeline", ["canonicalize", "fp16"])
def test_short_differential_run(pipeline: str, tmp_path: Path) -> None:
    """A bounded differential run (onnx backend; every example in a child process): examples
    compile and match ONNX Runtime, none is a mismatch."""
    r = subprocess.run([sys.executable, str(REPO / "bench" / "fuzz.py"), "--differential", "--pipelines", pipeline,
                        "--backends", "onnx", "--seconds", "4", "--save-dir", str(tmp_path / "found"),
                        "--json", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=300)
    assert (tmp_path / "r.json").exists(), r.stdout + r.stderr
    (res,) = json.loads((tmp_path / "r.json").read_text())
    assert res["examples"] >= 3 and res["ok"] >= 1, res
    assert res["mismatches"] == 0, f"{r.stdout}\nreproducers in {tmp_path / 'found'}"
    assert r.returncode == 0
