"""lepton-opt / lepton-run and lepton.optimize: user errors are one line with the right exit code,
outputs are atomic, inputs are never modified, plugins load through entry points."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import lepton
import lepton_ir
from lepton.cli import opt_main, run_main
from lepton_ir import Model, Node
from lepton_passes import Pass, PassError, register_pass

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "examples" / "lepton-example-plugin"


def make_onnx(doc: str = "") -> onnx.ModelProto:
    """y = Relu(x + b) with a symbolic batch dim; doc strings to strip."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    b = helper.make_tensor("b", TensorProto.FLOAT, [4], [0.5, -0.5, 1.0, -1.0])
    nodes = [helper.make_node("Add", ["x", "b"], ["s"], name="add", doc_string=doc),
             helper.make_node("Relu", ["s"], ["y"], name="relu")]
    g = helper.make_graph(nodes, "g", [x], [y], [b])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.doc_string = doc
    return m


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    p = tmp_path / "model.onnx"
    p.write_bytes(make_onnx("some docs").SerializeToString())
    return p


# -- test passes (tc- prefix) -------------------------------------------------------------------------
@register_pass
@dataclasses.dataclass(frozen=True)
class TcIdentity(Pass):
    """Insert an Identity before the Relu."""

    name = "tc-identity"
    count: int = dataclasses.field(default=1, metadata={"help": "how many Identities"})

    def run(self, model: Model) -> bool:
        for _ in range(self.count):
            relu = next(n for n in model.graph if n.op_type == "Relu")
            ident = Node("Identity", [relu.inputs[0]])
            model.graph.insert_before(relu, ident)
            ident.outputs[0].type = relu.inputs[0].type
            relu.replace_input(0, ident.outputs[0])
        return self.count > 0


@register_pass
@dataclasses.dataclass(frozen=True)
class TcChatty(Pass):
    """Logs a rewrite decision when rewrite debugging is on."""

    name = "tc-chatty"

    def run(self, model: Model) -> bool:
        from lepton_passes import REWRITE_LOG, debug_rewrites_enabled

        if debug_rewrites_enabled():
            REWRITE_LOG.debug("tc-chatty: near miss at relu (just testing)")
        return False


@register_pass
@dataclasses.dataclass(frozen=True)
class TcSub(Pass):
    """Turn the Add into a Sub (wrong outputs)."""

    name = "tc-sub"

    def run(self, model: Model) -> bool:
        next(n for n in model.graph if n.op_type == "Add").op_type = "Sub"
        return True


@register_pass
@dataclasses.dataclass(frozen=True)
class TcInterrupt(Pass):
    """Simulates Ctrl-C in the middle of a pass."""

    name = "tc-interrupt"

    def run(self, model: Model) -> bool:
        raise KeyboardInterrupt


@register_pass
@dataclasses.dataclass(frozen=True)
class TcCrash(Pass):
    """Raises like a buggy pass."""

    name = "tc-crash"

    def run(self, model: Model) -> bool:
        raise ZeroDivisionError("oops")


def script(name: str) -> list[str]:
    exe = shutil.which(name)
    if exe:
        return [exe]
    fn = {"lepton-opt": "opt_main", "lepton-run": "run_main"}[name]
    return [sys.executable, "-c", f"import sys; from lepton.cli import {fn}; sys.exit({fn}())"]


def run_cli(name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(script(name) + list(args), capture_output=True, text=True, timeout=120, env=env)


def one_error_line(stderr: str, prog: str = "lepton-opt") -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"{prog}: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


# -- user errors (real console scripts, in subprocesses) ---------------------------------------------
def test_help() -> None:
    r = run_cli("lepton-opt", "--help")
    assert r.returncode == 0 and "--passes PIPELINE" in r.stdout and "--list-passes" in r.stdout


def test_missing_file(tmp_path: Path) -> None:
    r = run_cli("lepton-opt", str(tmp_path / "nope.onnx"))
    assert r.returncode == 1
    assert "no such file" in one_error_line(r.stderr)


def test_garbage_file(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"\xff\xfe this is not protobuf \x00\x07" * 10)
    r = run_cli("lepton-opt", str(bad), "--passes", "")
    assert r.returncode == 1
    assert "garbage.onnx" in one_error_line(r.stderr)
    with pytest.raises(lepton_ir.ModelLoadError):
        lepton_ir.load(bad)


def test_bad_pipeline_is_a_usage_error(model_path: Path) -> None:
    r = run_cli("lepton-opt", str(model_path), "--passes", "no-such-pass{x=1}")
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert "unknown pass 'no-such-pass'" in line and "known passes:" in line and "column 1" in line
    r = run_cli("lepton-opt", str(model_path), "--passes", "fixpoint(")
    assert r.returncode == 2 and "expected a pass name" in one_error_line(r.stderr)


def test_usage_errors_exit_2(model_path: Path, tmp_path: Path) -> None:
    for args in (["--bogus"], [str(model_path), "--backend", "nope", "-o", str(tmp_path / "o")],
                 [], [str(model_path), "--input-shape", "x=1xZ"], [str(model_path), "--backend", "onnx"]):
        r = run_cli("lepton-opt", *args)
        assert r.returncode == 2, (args, r.stderr)
        one_error_line(r.stderr)


def test_bad_input_shape_value(model_path: Path) -> None:
    r = run_cli("lepton-opt", str(model_path), "--passes", "", "--input-shape", "nope=1x4")
    assert r.returncode == 1 and "nope" in one_error_line(r.stderr)


# -- successful runs -------------------------------------------------------------------------------------
def test_opt_writes_artifact_and_never_touches_the_input(model_path: Path, tmp_path: Path) -> None:
    before = model_path.read_bytes()
    out = tmp_path / "out"
    r = run_cli("lepton-opt", str(model_path), "--passes", "", "-o", str(out), "--input-shape", "x=2x4", "--check")
    assert r.returncode == 0, r.stderr
    assert "differential check passed" in r.stdout and f"wrote {out}" in r.stdout
    assert model_path.read_bytes() == before
    mf = json.loads((out / "manifest.json").read_text())
    assert mf["inputs"][0]["shape"] == [2, 4]
    assert mf["source_sha256"] == hashlib.sha256(before).hexdigest()


def test_opt_in_process_with_instruments(model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    before = model_path.read_bytes()
    out = tmp_path / "out"
    rc = opt_main([str(model_path), "--passes", "tc-identity{count=2}", "-o", str(out), "--time-passes",
                   "--print-ir-after-change", "--check"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "2 -> 4 nodes" in cap.out
    assert "IR after tc-identity{count=2}" in cap.err and "pass timing" in cap.err
    assert model_path.read_bytes() == before
    ops = [n.op_type for n in lepton_ir.load(out / "model.onnx").graph]
    assert ops == ["Add", "Identity", "Identity", "Relu"]
    # A .onnx output without a backend writes just the model.
    assert opt_main([str(model_path), "--passes", "tc-identity", "-o", str(tmp_path / "o.onnx")]) == 0
    assert len(lepton_ir.load(tmp_path / "o.onnx").graph) == 3


def test_list_passes_shows_docs_and_options(capsys: pytest.CaptureFixture) -> None:
    assert opt_main(["--list-passes", "--list-backends"]) == 0
    out = capsys.readouterr().out
    assert "tc-identity" in out and "Insert an Identity before the Relu." in out
    assert "count: int = 1  -- how many Identities" in out
    assert "fixpoint(...)" in out and "onnx" in out and "default pipeline" in out


def test_debug_rewrites(model_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert opt_main([str(model_path), "--passes", "tc-chatty"]) == 0
    assert "near miss" not in capsys.readouterr().err
    assert opt_main([str(model_path), "--passes", "tc-chatty", "--debug-rewrites"]) == 0
    assert "lepton_passes.rewrites: tc-chatty: near miss at relu" in capsys.readouterr().err


# -- failures: one line, right code, no output ------------------------------------------------------------
def test_differential_failure_names_the_pass_and_writes_nothing(model_path: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    rc = opt_main([str(model_path), "--passes", "tc-identity,tc-sub", "-o", str(out), "--check",
                   "--reproducer-dir", str(tmp_path / "repro")])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 1
    assert "pass 'tc-sub' changed output 'y'" in line and "max abs error" in line and "reproducer written to" in line
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_crashing_pass_is_one_line_with_reproducer(model_path: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    rc = opt_main([str(model_path), "--passes", "tc-crash", "-o", str(out), "--reproducer-dir", str(tmp_path / "r")])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 1 and "pass 'tc-crash' failed: ZeroDivisionError: oops" in line
    folder = Path(line.split("reproducer written to ")[1])
    assert (folder / "pipeline.txt").read_text().strip() == "tc-crash"
    assert not out.exists()


def test_ctrl_c_exits_130_and_leaves_nothing(model_path: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    rc = opt_main([str(model_path), "--passes", "tc-identity,tc-interrupt", "-o", str(out)])
    assert rc == 130
    assert capsys.readouterr().err.strip() == "lepton-opt: interrupted"
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_output_may_not_overwrite_the_input(model_path: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    before = model_path.read_bytes()
    assert opt_main([str(model_path), "--passes", "tc-identity", "-o", str(model_path)]) == 1
    assert "would overwrite the input model" in one_error_line(capsys.readouterr().err)
    art = tmp_path / "art"
    assert opt_main([str(model_path), "--passes", "", "-o", str(art)]) == 0
    assert opt_main([str(art / "model.onnx"), "--passes", "", "-o", str(art)]) == 1
    assert "would overwrite" in one_error_line(capsys.readouterr().err)
    assert (art / "model.onnx").exists() and model_path.read_bytes() == before


def test_failure_keeps_a_previous_artifact(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert opt_main([str(model_path), "--passes", "", "-o", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert opt_main([str(model_path), "--passes", "tc-crash", "-o", str(out),
                     "--reproducer-dir", str(tmp_path / "r")]) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# -- lepton.optimize ---------------------------------------------------------------------------------------
def test_optimize_accepts_every_source_and_copies_it(tmp_path: Path, model_path: Path) -> None:
    proto = make_onnx("d")
    proto_bytes = proto.SerializeToString()
    model = lepton_ir.load(proto)
    model_bytes = lepton_ir.to_onnx(model).SerializeToString()
    file_bytes = model_path.read_bytes()
    for src in (str(model_path), model_path, file_bytes, proto, model):
        res = lepton.optimize(src, "tc-identity")
        assert (res.nodes_before, res.nodes_after) == (2, 3)
        assert [r.name for r in res.report.records] == ["tc-identity"]
        assert res.artifact is None and res.pipeline == "tc-identity"
        assert len(res.model.graph) == 3
    assert proto.SerializeToString() == proto_bytes
    assert lepton_ir.to_onnx(model).SerializeToString() == model_bytes
    assert model_path.read_bytes() == file_bytes


def test_optimize_with_backend_and_options(tmp_path: Path, model_path: Path) -> None:
    res = lepton.optimize(model_path, "tc-identity", "onnx", tmp_path / "art", input_shapes={"x": (3, 4)},
                          check=True, external_data=True)
    assert res.artifact == tmp_path / "art"
    assert (tmp_path / "art" / "model.onnx.data").exists()
    runner = lepton.load(res.artifact)
    x = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_allclose(runner.run({"x": x})["y"], np.maximum(x + [0.5, -0.5, 1.0, -1.0], 0))
    with pytest.raises(lepton_ir.LeptonError, match="needs an output"):
        lepton.optimize(model_path, "", "onnx")


# -- lepton-run ---------------------------------------------------------------------------------------------
def test_lepton_run_bench_and_compare(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "art"
    assert opt_main([str(model_path), "--passes", "tc-identity", "-o", str(out)]) == 0
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    r = run_cli("lepton-run", str(out), "--inputs", str(tmp_path / "in.npz"), "--output", str(tmp_path / "o.npz"),
                "--bench", "5", "--compare", str(model_path))
    assert r.returncode == 0, r.stderr
    assert "median" in r.stdout and "p90" in r.stdout and "compare with ONNX Runtime" in r.stdout
    assert "onnxruntime latency" in r.stdout
    with np.load(tmp_path / "o.npz") as z:
        np.testing.assert_allclose(z["y"], np.maximum(x + [0.5, -0.5, 1.0, -1.0], 0))


def test_lepton_run_mismatch_and_errors(model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "art"
    assert opt_main([str(model_path), "--passes", "tc-sub", "-o", str(out)]) == 0
    capsys.readouterr()
    assert run_main([str(out), "--compare", str(model_path)]) == 1
    assert "differs from ONNX Runtime" in one_error_line(capsys.readouterr().err, "lepton-run")
    assert run_main([str(tmp_path / "none")]) == 1
    assert "not a Lepton artifact" in one_error_line(capsys.readouterr().err, "lepton-run")
    assert run_main([str(out), "--inputs", str(tmp_path / "missing.npz")]) == 1
    one_error_line(capsys.readouterr().err, "lepton-run")
    assert run_main([str(out), "--bench", "x"]) == 2
    one_error_line(capsys.readouterr().err, "lepton-run")


# -- plugins ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import importlib.util

    import setuptools

    st_version = tuple(int(x) for x in setuptools.__version__.split(".")[:2])
    if importlib.util.find_spec("wheel") is None and st_version < (70, 1):
        # --no-build-isolation builds with what is installed: bdist_wheel comes from `wheel` or setuptools>=70.1.
        pytest.skip(f"cannot build the plugin without build isolation: setuptools {setuptools.__version__} "
                    "and no `wheel` package installed")
    target = tmp_path_factory.mktemp("plugin")
    work = tmp_path_factory.mktemp("plugin-src") / "src"
    shutil.copytree(PLUGIN, work)  # build in a copy: setuptools writes build/ and *.egg-info beside the source
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(target), str(work)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return target


def plugin_env(*paths: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(p) for p in paths] + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_plugin_pass_is_listed_and_runs(plugin_dir: Path, model_path: Path, tmp_path: Path) -> None:
    env = plugin_env(plugin_dir)
    r = run_cli("lepton-opt", "--list-passes", env=env)
    assert r.returncode == 0, r.stderr
    assert "example-strip-doc" in r.stdout and "Clear doc strings" in r.stdout and "keep-model-doc" in r.stdout
    out = tmp_path / "out"
    r = run_cli("lepton-opt", str(model_path), "--passes", "example-strip-doc", "--backend", "onnx", "-o", str(out),
                env=env)
    assert r.returncode == 0, r.stderr
    optimized = onnx.load(str(out / "model.onnx"))
    assert optimized.doc_string == "" and all(n.doc_string == "" for n in optimized.graph.node)
    assert onnx.load(str(model_path)).doc_string == "some docs"
    assert json.loads((out / "manifest.json").read_text())["pipeline"] == "example-strip-doc"


def test_plugin_backend_is_listed_with_typed_options_and_compiles(plugin_dir: Path, model_path: Path,
                                                                  tmp_path: Path) -> None:
    """A backend from a separately installed package (entry point `lepton.backends`): listed with its
    typed options, compiles from the CLI, and its artifact runs through lepton-run (its own load())
    and matches ONNX Runtime on the original model."""
    env = plugin_env(plugin_dir)
    r = run_cli("lepton-opt", "--list-backends", env=env)
    assert r.returncode == 0, r.stderr
    assert "example-reference" in r.stdout and "[entry point example-reference" in r.stdout
    assert "--option form=...: one of text|onnx = text" in r.stdout and "--option note=...: str" in r.stdout
    out = tmp_path / "ref"
    r = run_cli("lepton-opt", str(model_path), "--backend", "example-reference", "--option", "note=from the test",
                "-o", str(out), env=env)
    assert r.returncode == 0, r.stderr
    mf = json.loads((out / "manifest.json").read_text())
    stage = mf["stages"][0]
    assert stage["backend"] == "example-reference" and stage["entry"] == "model.lep"
    assert stage["options"] == {"form": "text", "note": "from the test"} and stage["extra"]["note"] == "from the test"
    r = run_cli("lepton-run", str(out), "--compare", str(model_path), "--rtol", "1e-6", "--atol", "1e-6", env=env)
    assert r.returncode == 0, r.stderr
    assert "compare with ONNX Runtime" in r.stdout
    # A typo in an option is one line naming it, with a suggestion, exit 2.
    r = run_cli("lepton-opt", str(model_path), "--backend", "example-reference", "--option", "from=onnx",
                "-o", str(tmp_path / "bad"), env=env)
    assert r.returncode == 2, r.stderr
    assert "has no option 'from' (did you mean 'form'?)" in one_error_line(r.stderr)
    r = run_cli("lepton-opt", str(model_path), "--backend", "example-reference", "--option", "form=pdf",
                "-o", str(tmp_path / "bad"), env=env)
    assert r.returncode == 2 and "expected one of text|onnx" in one_error_line(r.stderr)
    assert not (tmp_path / "bad").exists()


def test_duplicate_plugin_pass_name_is_an_error(plugin_dir: Path, model_path: Path, tmp_path: Path) -> None:
    # A second installed distribution registering the same pass name under another class.
    dup = tmp_path / "dup"
    dup.mkdir()
    (dup / "dup_plugin.py").write_text(
        "import dataclasses\nfrom lepton_passes import Pass\n\n"
        "@dataclasses.dataclass(frozen=True)\nclass Dup(Pass):\n"
        "    '''Same name.'''\n    name = 'example-strip-doc'\n    def run(self, model):\n        return False\n")
    info = dup / "dup_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dup-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[lepton.passes]\nexample-strip-doc = dup_plugin:Dup\n")
    r = run_cli("lepton-opt", "--list-passes", env=plugin_env(plugin_dir, dup))
    assert r.returncode == 1
    line = one_error_line(r.stderr)
    assert "duplicate pass name 'example-strip-doc'" in line


def test_duplicate_in_process_registration_is_an_error() -> None:
    with pytest.raises(PassError, match="duplicate pass name 'tc-identity'"):
        register_pass(dataclasses.dataclass(frozen=True)(type("X", (Pass,), {"name": "tc-identity"})))


def test_remote_tuning_usage_errors(tmp_path: Path) -> None:
    """--tune-rpc/--tune-tracker/--tune-key: misuse is a one-line usage error (exit 2)."""
    digits = str(Path(lepton.__file__).parent / "data" / "digits_cnn.onnx")
    out = str(tmp_path / "o")
    cases = [
        (["--backend", "tvm-arm", "-o", out, "--tune-rpc", "127.0.0.1:9"], "go with --tune TRIALS"),
        (["--backend", "tvm-arm", "-o", out, "--tune", "4", "--tune-rpc", "127.0.0.1:9",
          "--tune-tracker", "127.0.0.1:9"], "not both"),
        (["--backend", "tvm-arm", "-o", out, "--tune", "4", "--tune-tracker", "127.0.0.1:9"], "needs --tune-key"),
    ]
    for args, needle in cases:
        r = run_cli("lepton-opt", digits, *args)
        assert r.returncode == 2, (args, r.stderr)
        assert needle in one_error_line(r.stderr), args


def test_cross_target_tuning_needs_a_device(tmp_path: Path) -> None:
    """Kernels for aarch64 cannot be measured on this host: tuning tvm-arm without a remote device
    is refused with a one-line error (and nothing is written)."""
    pytest.importorskip("tvm")
    digits = str(Path(lepton.__file__).parent / "data" / "digits_cnn.onnx")
    out = tmp_path / "o"
    r = run_cli("lepton-opt", digits, "--input-shape", "image=1x1x8x8", "--backend", "tvm-arm", "--target",
                "cortex-a72", "-o", str(out), "--tune", "4", "--tuning-db", str(tmp_path / "db"))
    assert r.returncode == 1
    assert "measures on the device" in one_error_line(r.stderr) and "--tune-rpc" in r.stderr
    assert not out.exists()
