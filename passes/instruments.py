"""Pass instruments: hook objects a PassManager calls around every pass.

Hooks (all optional; the base class does nothing): `before_run(model, pipeline)`,
`before_pass(pass, model)`, `after_pass(pass, model, changed, seconds)` (may raise to fail the run),
`on_failure(pass, model, error) -> str | None` (a note appended to the error message),
`after_run(model, report)`.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Mapping

import numpy as np

import lepton_ir
from lepton_ir import Model, UnsupportedError, VerifyError
from lepton_ir.reference import compare_outputs, random_inputs, run_ort

from .base import Pass, PassError, PassInputError

if TYPE_CHECKING:
    from .manager import RunReport
    from .pipeline import Pipeline


def count_nodes(model: Model) -> int:
    """Nodes in the main graph and all subgraphs."""
    return sum(1 for _ in model.graph.all_nodes())


def _pass_text(p: Pass) -> str:
    from .pipeline import format_pass

    return format_pass(p)


def plugin_prefix(p: object) -> tuple[str, str]:
    """(environment prefix, `--load-plugin` arguments) that make a printed `lepton-opt` command
    find the passes of `p` (a pass or pipeline) that come from neither Lepton nor an installed
    plugin: a pass registered by a test suite or a package that is not installed. The prefix puts
    the module's root folder on PYTHONPATH when it is not in site-packages."""
    import site
    import sys

    leaves = p.passes() if hasattr(p, "passes") else [p]  # type: ignore[attr-defined]
    mods: list[str] = []
    roots: list[str] = []
    sites = {str(Path(x).resolve()) for x in [*site.getsitepackages(), site.getusersitepackages()]}
    for q in leaves:
        mod = type(q).__module__
        if mod.split(".")[0] in ("lepton_passes", "lepton_backends", "lepton_ir", "lepton") or mod in mods:
            continue
        mods.append(mod)
        f = getattr(sys.modules.get(mod), "__file__", None)
        if f:
            depth = mod.count(".") + (1 if Path(f).name == "__init__.py" else 0)
            root = str(Path(f).resolve().parents[depth])
            if root not in sites and root not in roots:
                roots.append(root)
    env = f"PYTHONPATH={shlex.quote(':'.join(roots))} " if roots else ""
    return env, "".join(f" --load-plugin {shlex.quote(m)}" for m in mods)


def ir_text(model: Model) -> str:
    """`lepton_ir.to_text(model)`, or a plain node listing where the text form is unavailable."""
    note = ""
    try:
        return lepton_ir.to_text(model)
    except (ImportError, NotImplementedError):
        pass
    except Exception as e:  # a printer bug must not abort the optimization it is watching
        note = f"  // lepton_ir.to_text failed ({type(e).__name__}: {e}); node listing instead\n"
    lines = [f"{note}graph {model.graph.name or '<main>'} (opset {model.opset_imports})"]
    lines += [f"  input {v.name}: {v.type}" for v in model.graph.inputs]
    lines += [f"  {n!r}" for n in model.graph.all_nodes()]
    lines += [f"  output {v.name}: {v.type}" for v in model.graph.outputs]
    return "\n".join(lines)


class Instrument:
    """Base class of instruments; override the hooks you need."""

    def before_run(self, model: Model, pipeline: "Pipeline") -> None:
        pass

    def before_pass(self, p: Pass, model: Model) -> None:
        pass

    def after_pass(self, p: Pass, model: Model, changed: bool, seconds: float) -> None:
        pass

    def on_failure(self, p: Pass, model: Model, error: BaseException) -> str | None:
        return None

    def after_run(self, model: Model, report: "RunReport") -> None:
        pass


# ------------------------------------------------------------------------------------------------
class VerifyInstrument(Instrument):
    """Verify the IR before the first pass and after every pass; a VerifyError names the culprit."""

    def before_run(self, model: Model, pipeline: "Pipeline") -> None:
        try:
            model.verify()
        except VerifyError as e:
            raise VerifyError(f"the input model is invalid before any pass ran: {e}") from e

    def after_pass(self, p: Pass, model: Model, changed: bool, seconds: float) -> None:
        try:
            model.verify()
        except VerifyError as e:
            raise VerifyError(f"pass {_pass_text(p)!r} broke the IR: {e}") from e


# ------------------------------------------------------------------------------------------------
class PrintIRInstrument(Instrument):
    """Print the IR after every pass (`only_changed=False`) or only after those that changed it."""

    def __init__(self, stream: IO[str] | None = None, *, only_changed: bool = False) -> None:
        self.stream = stream
        self.only_changed = only_changed

    def after_pass(self, p: Pass, model: Model, changed: bool, seconds: float) -> None:
        if self.only_changed and not changed:
            return
        out = self.stream or sys.stderr
        out.write(f"// ----- IR after {_pass_text(p)}{'' if changed else ' (unchanged)'} -----\n")
        out.write(ir_text(model).rstrip("\n") + "\n")
        out.flush()


# ------------------------------------------------------------------------------------------------
class TimingInstrument(Instrument):
    """Wall time per pass name: runs, changes, total and mean ms. Prints a table at the end if
    given a stream; `table()` gives it any time."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream
        self.stats: dict[str, list[float]] = {}  # text -> [runs, changes, seconds]
        self.total = 0.0
        self._t0 = 0.0

    def before_run(self, model: Model, pipeline: "Pipeline") -> None:
        self._t0 = time.perf_counter()

    def after_pass(self, p: Pass, model: Model, changed: bool, seconds: float) -> None:
        s = self.stats.setdefault(_pass_text(p), [0, 0, 0.0])
        s[0] += 1
        s[1] += int(changed)
        s[2] += seconds

    def after_run(self, model: Model, report: "RunReport") -> None:
        self.total = time.perf_counter() - self._t0
        if self.stream is not None:
            self.stream.write(self.table() + "\n")
            self.stream.flush()

    def table(self) -> str:
        rows = [(name, str(int(r)), str(int(c)), f"{t * 1e3:.2f}", f"{t * 1e3 / max(r, 1):.2f}")
                for name, (r, c, t) in sorted(self.stats.items(), key=lambda kv: -kv[1][2])]
        passes = sum(s[2] for s in self.stats.values())
        rows.append(("total (passes)", str(int(sum(s[0] for s in self.stats.values()))),
                     str(int(sum(s[1] for s in self.stats.values()))), f"{passes * 1e3:.2f}", ""))
        head = ("pass", "runs", "changed", "total ms", "mean ms")
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(head)]
        fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
        lines = ["===- pass timing -===", fmt.format(*head)]
        lines += [fmt.format(*r) for r in rows]
        if self.total:
            lines.append(f"wall time (with instruments): {self.total * 1e3:.2f} ms")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
class DifferentialMismatchError(PassError):
    """A pass changed the model's outputs beyond its tolerance (or made it unrunnable)."""

    def __init__(self, message: str, *, pass_name: str = "", output: str = "", max_abs: float = float("nan"),
                 max_rel: float = float("nan")) -> None:
        super().__init__(message)
        self.pass_name = pass_name
        self.output = output
        self.max_abs = max_abs
        self.max_rel = max_rel


def make_inputs(model: Model, *, seed: int = 0, dim_size: int = 2) -> dict[str, np.ndarray]:
    """Deterministic random inputs from the graph input types; unknown/symbolic dims = dim_size.

    `lepton_ir.reference.random_inputs`, with its error as a PassError (what callers here expect).
    """
    try:
        return random_inputs(model, seed=seed, dim_size=dim_size)
    except UnsupportedError as e:
        raise PassError(str(e)) from None


def _has_lepton_ops(model: Model) -> bool:
    return any(n.domain == "ai.lepton" for n in model.graph.all_nodes()) or \
        any(f.domain == "ai.lepton" for f in model.functions.values())


def run_onnxruntime(model: Model, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of `model` under ONNX Runtime (CPU, graph optimizations off), in graph-output order.

    ONNX Runtime has no kernels for Lepton's own `ai.lepton` ops (what `fuse` makes): a model
    holding them runs as a lowered copy (`lower-fused-to-standard`, the decomposed standard form
    that states what each fused op means); `model` itself is never touched.
    """
    if _has_lepton_ops(model):
        from lepton_ir.clone import clone_model

        from .util import unfuse

        model = clone_model(model)
        unfuse(model)
    return run_ort(model, inputs)


class DifferentialInstrument(Instrument):
    """Run ONNX Runtime before and after each pass that changed the model; fail on the first pass
    whose outputs move beyond `pass.tolerance(model)`.

    Inputs are `inputs` if given, else generated from the input types (`make_inputs`, seeded).
    Each pass is compared with the outputs just before it, so the blame lands on one pass.
    """

    def __init__(self, inputs: Mapping[str, np.ndarray] | None = None, *, seed: int = 0, dim_size: int = 2) -> None:
        self.user_inputs = dict(inputs) if inputs is not None else None
        self.seed = seed
        self.dim_size = dim_size
        self.inputs: dict[str, np.ndarray] = {}
        self.reference: list[np.ndarray] | None = None
        self.checked = 0

    def before_run(self, model: Model, pipeline: "Pipeline") -> None:
        self.inputs = self.user_inputs if self.user_inputs is not None else \
            make_inputs(model, seed=self.seed, dim_size=self.dim_size)
        try:
            self.reference = run_onnxruntime(model, self.inputs)
        except Exception as e:
            raise PassError(f"differential check: ONNX Runtime cannot run the input model: "
                            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e

    def after_pass(self, p: Pass, model: Model, changed: bool, seconds: float) -> None:
        if not changed or self.reference is None:
            return  # an unchanged model has unchanged outputs
        text = _pass_text(p)
        try:
            got = run_onnxruntime(model, self.inputs)
        except Exception as e:
            msg = str(e).splitlines()[0] if str(e) else ""
            raise DifferentialMismatchError(
                f"pass {text!r} made the model unrunnable by ONNX Runtime: {type(e).__name__}: {msg}",
                pass_name=p.name) from e
        self.checked += 1
        rtol, atol = p.tolerance(model)
        bad = compare_outputs(self.reference, got, rtol, atol)
        if bad is not None:
            k = bad.index
            out_name = model.graph.outputs[k].name if 0 <= k < len(model.graph.outputs) else "?"
            raise DifferentialMismatchError(
                f"pass {text!r} changed output {out_name!r} beyond its tolerance (rtol={rtol:g}, atol={atol:g}): "
                f"{bad.reason}, max abs error {bad.max_abs:.3g}, max rel error {bad.max_rel:.3g}",
                pass_name=p.name, output=str(out_name), max_abs=bad.max_abs, max_rel=bad.max_rel)
        self.reference = got  # the next pass is judged against this one's (accepted) outputs


# ------------------------------------------------------------------------------------------------
class ReproducerInstrument(Instrument):
    """On a pass failure, write a folder reproducing it: `input.onnx` (the model just before the
    failing pass), `input.ir.txt` (when the text form is available), `pipeline.txt` (the failing
    pass's text) and `README.txt` (the error and the exact `lepton-opt` command).

    `root` is where folders go (created as `lepton-repro-<pass>-XXXX`); default: the temp dir.
    The snapshot before each pass is an IR clone sharing the weights (O(nodes), no copy of data).
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else None
        self._snapshot: Model | None = None
        self.last_path: Path | None = None
        self._check = False

    def before_run(self, model: Model, pipeline: "Pipeline") -> None:
        self._check = False

    def before_pass(self, p: Pass, model: Model) -> None:
        # An IR clone shares the (immutable) weights: O(nodes) per pass instead of a full export.
        from lepton_ir.clone import clone_model

        self._snapshot = clone_model(model)

    def on_failure(self, p: Pass, model: Model, error: BaseException) -> str | None:
        if self._snapshot is None or isinstance(error, PassInputError):
            return None  # the user's data is wrong, not the pass: nothing to reproduce
        root = self.root or Path(tempfile.gettempdir())
        root.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f"lepton-repro-{p.name}-", dir=root))
        snap = self._snapshot
        lepton_ir.save(snap, folder / "input.onnx")
        try:
            (folder / "input.ir.txt").write_text(lepton_ir.to_text(snap) + "\n")
        except Exception:  # no text form in this build (or a printer bug): the .onnx is what matters
            pass
        text = _pass_text(p)
        (folder / "pipeline.txt").write_text(text + "\n")
        check = " --check" if isinstance(error, DifferentialMismatchError) else ""
        env, plugins = plugin_prefix(p)  # a plugin that is not installed: import it by name
        cmd = f"{env}lepton-opt {shlex.quote(str(folder / 'input.onnx'))}{plugins} --passes {shlex.quote(text)}{check}"
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        (folder / "README.txt").write_text(
            f"Lepton reproducer: pass {text!r} failed.\n\n"
            f"Error: {type(error).__name__}: {first}\n\n"
            f"input.onnx is the model just before the failing pass; pipeline.txt holds that pass.\n"
            f"Reproduce with:\n\n    {cmd}\n")
        self.last_path = folder
        return f"reproducer written to {folder}"


__all__ = ["Instrument", "VerifyInstrument", "PrintIRInstrument", "TimingInstrument", "DifferentialInstrument",
           "DifferentialMismatchError", "ReproducerInstrument", "make_inputs", "run_onnxruntime",
           "compare_outputs", "count_nodes", "ir_text"]
