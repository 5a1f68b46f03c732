"""The TVM capability oracle: can TVM compile this node for the target, and does it match ONNX Runtime?

Never a guess from a table: each node (with its attributes, dtypes, shapes and small constant
operands) is cut out of the lowered model (`lepton_ir.extract`), imported by TVM's ONNX frontend
with Lepton's converters, compiled for the target (a trial compile of one node takes ~35 ms) and,
on a target this host runs, executed on the node's real input values (recorded from one ONNX
Runtime run of the whole model) and compared with what ONNX Runtime computed for it. For a target
this host cannot run (aarch64, CUDA) the compile is for the target and the numbers are checked
on the host CPU with the same TVM lowering (TVM's TIR is target-independent up to code generation).

Verdicts are cached on disk per target (`~/.cache/lepton/capability/<target hash>.json`, keyed by
the sha256 of the single-node model), so a later compile of the same kinds of nodes asks nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

import lepton_ir
from lepton_ir import Model, Node

#: The tolerance a region must meet against ONNX Runtime (the real-model sweeps' tolerance).
RTOL, ATOL = 1e-3, 1e-4
#: Part of every cache key: bump when a change here changes verdicts, so old ones are not reused.
ORACLE_VERSION = 5


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What the oracle found for one node."""

    ok: bool
    reason: str = ""  # why not, in one line (the op and what TVM said)


def cache_dir() -> Path:
    return Path(os.environ.get("LEPTON_CAPABILITY_CACHE", Path.home() / ".cache" / "lepton" / "capability"))


def _label(node: Node) -> str:
    return f"{node.op_type} {node.name!r}" if node.name else node.op_type


_TELLING = ("Check failed", "Error", "error:", "not supported", "requires", "cannot", "Unsupported", "expect")


def _first_line(e: BaseException) -> str:
    """The line of a TVM error that says what went wrong: TVM's messages often end with the Relax
    expression being converted, which names no reason; prefer a line that does."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    telling = [ln for ln in lines if any(t in ln for t in _TELLING) and not ln.startswith(("File ", "Traceback"))]
    pick = telling[-1] if telling else (lines[-1] if lines else type(e).__name__)
    return pick[:240]


def record_values(model: Model, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """Every top-level value of `model` on `feeds`, from one ONNX Runtime run (None if ORT fails)."""
    import onnx

    from lepton_ir.reference import ort_session

    proto = lepton_ir.to_onnx(model)
    have = {o.name for o in proto.graph.output}
    names = [o.name for n in model.graph for o in n.outputs if o.name and o.name not in have]
    proto.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    try:
        sess = ort_session(proto)
        outs = sess.run(None, {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}})
        values = dict(feeds)
        # Sequences (lists) stay lists: np.asarray of a ragged sequence raises.
        values.update(zip([o.name for o in sess.get_outputs()],
                          (x if isinstance(x, list) else np.asarray(x) for x in outs)))
    except Exception:
        return None
    return values


class TvmCapability:
    """Per-node verdicts for one TVM target (a `tvm.target.Target`)."""

    def __init__(self, target: Any, *, cache: bool = True) -> None:
        self.target = target
        self.host_runs = _runs_on_host(target)
        key = hashlib.sha256(str(target).encode()).hexdigest()[:16]
        self.cache_path = cache_dir() / f"{key}.json" if cache else None
        self._cache: dict[str, list[Any]] = {}
        if self.cache_path is not None and self.cache_path.is_file():
            try:
                self._cache = json.loads(self.cache_path.read_text())
            except (OSError, ValueError):
                self._cache = {}  # a damaged cache is only a cache: start again
        self.trials = 0
        self.values: dict[str, np.ndarray] | None = None

    def check(self, model: Model, feeds: Mapping[str, np.ndarray] | None = None) -> dict[int, Verdict]:
        """Verdicts for the top-level nodes of `model` (by id(node)). `feeds` are sample inputs for
        the numeric check (default: seeded random data, symbolic dims 1)."""
        from lepton_ir.reference import random_inputs

        if feeds is None:
            try:
                feeds = random_inputs(model, seed=0, dim_size=1)
            except lepton_ir.LeptonError:
                feeds = None  # strings, sequences, optionals: verdicts from compiling alone
        values = record_values(model, feeds) if feeds is not None else None
        self.values = values  # the recorded values, for callers that time regions on them
        verdicts: dict[int, Verdict] = {}
        for node in model.graph:
            verdicts[id(node)] = self._check_node(model, node, values)
        self._save()
        return verdicts

    # -- one node ---------------------------------------------------------------------------------
    def _check_node(self, model: Model, node: Node, values: Mapping[str, np.ndarray] | None) -> Verdict:
        g = model.graph
        reads = []
        for v in _reads_of(node, g):
            if v.name not in reads:
                reads.append(v.name)
        outs = [o.name for o in node.outputs if o.name]
        from .known_wrong import known_wrong

        wrong = known_wrong(node, g)  # wrong values the sample inputs may not show (known_wrong.py)
        if wrong:
            return Verdict(False, wrong)
        try:
            single = lepton_ir.extract(model, reads, outs)
            proto = lepton_ir.to_onnx(single)
        except lepton_ir.LeptonError as e:
            return Verdict(False, f"{_label(node)}: cannot be cut out on its own ({_first_line(e)})")
        key = hashlib.sha256(b"%d:" % ORACLE_VERSION + proto.SerializeToString(deterministic=True)).hexdigest()
        hit = self._cache.get(key)
        if hit is not None:
            return Verdict(bool(hit[0]), hit[1].replace("{node}", _label(node)))
        verdict = self._trial(proto, node, reads, outs, values)
        # TVM turns a Ctrl-C during a compile into a RuntimeError, which would read as a refusal:
        # the CLI's interrupt check raises here first, so no such verdict is ever cached.
        from lepton_backends.base import before_publish

        before_publish()
        self._cache[key] = [verdict.ok, verdict.reason.replace(_label(node), "{node}", 1)]
        return verdict

    def _trial(self, proto: Any, node: Node, reads: list[str], outs: list[str],
               values: Mapping[str, np.ndarray] | None) -> Verdict:
        from tvm import relax, runtime

        from lepton_ir.reference import compare_outputs

        from . import lower
        from .targets import resolve_target

        self.trials += 1
        what = _label(node)
        try:
            mod = lower.to_relax(proto, None, target=self.target)
            ex = lower.build(mod, self.target)
        except Exception as e:  # the importer or the compiler refused: that is the answer
            return Verdict(False, f"{what}: TVM cannot compile it: {_first_line(e)}")
        if values is None or any(n not in values for n in reads + outs):
            # No recorded values (ONNX Runtime could not run the sample): compiling is all we know.
            return Verdict(True)
        try:
            if not self.host_runs:
                host = resolve_target("native")
                ex = lower.build(lower.to_relax(proto, None, target=host), host)
            import tvm

            vm = relax.VirtualMachine(ex, tvm.cpu())
            # Not np.ascontiguousarray: it turns a 0-d value (a quantization scale) into shape [1].
            arrays = [np.asarray(values[n]) for n in reads]
            args = [runtime.tensor(a if a.flags.c_contiguous else np.array(a, order="C"), tvm.cpu()) for a in arrays]
            from .artifact import _flatten

            got = [np.asarray(t.numpy()) for t in _flatten(vm["main"](*args))]
        except Exception as e:
            return Verdict(False, f"{what}: TVM's code fails to run: {_first_line(e)}")
        bad = compare_outputs([values[n] for n in outs], got, RTOL, ATOL)
        if bad is not None:
            return Verdict(False, f"{what}: TVM's result differs from ONNX Runtime ({bad})")
        return Verdict(True)

    def _save(self) -> None:
        if self.cache_path is None:
            return
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            # Merge with what other compiles saved meanwhile (parallel workers share the file).
            try:
                merged = json.loads(self.cache_path.read_text()) if self.cache_path.is_file() else {}
            except (OSError, ValueError):
                merged = {}
            merged.update(self._cache)
            fd, tmp = tempfile.mkstemp(dir=self.cache_path.parent, prefix=".cap-")
            with os.fdopen(fd, "w") as f:
                json.dump(merged, f)
            os.replace(tmp, self.cache_path)  # atomic: concurrent compiles never see half a file
        except OSError:
            pass  # an unwritable cache only costs time


def _reads_of(node: Node, graph: lepton_ir.Graph) -> list[lepton_ir.Value]:
    from lepton_ir.partition import _reads

    return _reads(node, graph)


def _runs_on_host(target: Any) -> bool:
    from .artifact import _host_can_run, _target_json

    return _host_can_run(_target_json(target)) is None
