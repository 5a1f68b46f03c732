"""Hostile input to `lepton_ir.load` (and `save`): every bad file is a one-line LeptonError.

Files come from users, so the importer must never crash (no raw DecodeError, KeyError,
MemoryError, ...), never allocate what a header merely claims, and never read outside the model's
folder through external data. Each case asserts the error class and that the message is a single
line naming the problem (tensor name, path, node).
"""

from __future__ import annotations

import os
import pathlib
import random

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lepton_ir
from lepton_ir import ExternalDataError, GraphCycleError, ModelLoadError, ModelTooLargeError
from lepton_ir.onnx_io import MappedTensor


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def _vi(name: str, dims: list | None = None, elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, [2] if dims is None else dims)



@pytest.fixture(autouse=True)
def _always_scan(monkeypatch):
    """Files here are small; scan them anyway so the mapped-weights path (used above
    onnx_io.SCAN_MIN_BYTES) is what these tests exercise."""
    import lepton_ir.onnx_io

    monkeypatch.setattr(lepton_ir.onnx_io, "SCAN_MIN_BYTES", 0)

def _model(nodes, inputs=("x",), outputs=("y",), inits=(), opsets=(("", 17),), value_info=()) -> onnx.ModelProto:
    g = helper.make_graph(list(nodes), "g", [_vi(i) if isinstance(i, str) else i for i in inputs],
                          [_vi(o) if isinstance(o, str) else o for o in outputs], list(inits),
                          value_info=list(value_info))
    return helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])


def _relu_model() -> onnx.ModelProto:
    return _model([helper.make_node("Relu", ["x"], ["y"])])


def expect_error(cls: type[Exception], src, *needles: str, **kw) -> str:
    """Load `src`, assert it raises exactly `cls` (or a subclass) with a one-line message naming
    every needle; return the message."""
    with pytest.raises(cls) as info:
        lepton_ir.load(src, **kw)
    msg = str(info.value)
    assert "\n" not in msg and "\r" not in msg, f"message is not one line: {msg!r}"
    for n in needles:
        assert n in msg, f"{n!r} not in message {msg!r}"
    return msg


def _ext_tensor(name: str, loc: str, dims=(4,), offset=None, length=None) -> onnx.TensorProto:
    t = TensorProto()
    t.name = name
    t.data_type = TensorProto.FLOAT
    t.dims.extend(dims)
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", loc), ("offset", offset), ("length", length)):
        if v is not None:
            e = t.external_data.add()
            e.key, e.value = k, str(v)
    return t


def _ext_model(folder: pathlib.Path, loc: str, **kw) -> pathlib.Path:
    """A model in `folder` whose weight `w` is external data at `loc`; returns its path."""
    t = _ext_tensor("w", loc, **kw)
    dims = list(t.dims)
    m = _model([helper.make_node("Add", ["x", "w"], ["y"])], inputs=[_vi("x", dims)], outputs=[_vi("y", dims)],
               inits=[t])
    p = folder / "model.onnx"
    p.write_bytes(m.SerializeToString())
    return p


@pytest.fixture
def layout(tmp_path: pathlib.Path) -> dict[str, pathlib.Path]:
    """model/ (with a good w.bin of 4 floats) and, beside it, outside/secret.bin."""
    model = tmp_path / "model"
    outside = tmp_path / "outside"
    model.mkdir()
    outside.mkdir()
    (model / "w.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    (outside / "secret.bin").write_bytes(b"S" * 64)
    return {"model": model, "outside": outside, "secret": outside / "secret.bin"}


# ------------------------------------------------------------------------------------------------
# malformed files
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(8))
def test_random_bytes(tmp_path: pathlib.Path, seed: int) -> None:
    data = random.Random(seed).randbytes(2000)
    p = tmp_path / "junk.onnx"
    p.write_bytes(data)
    expect_error(ModelLoadError, p, str(p))
    expect_error(ModelLoadError, data)


def test_random_bytes_many_never_crash() -> None:
    # Short random strings hit every wire type and varint path; all must end as ModelLoadError
    # (a few happen to parse as a ModelProto without a graph: also ModelLoadError).
    rng = random.Random(1234)
    for _ in range(300):
        data = rng.randbytes(rng.randrange(1, 64))
        with pytest.raises(ModelLoadError) as info:
            lepton_ir.load(data)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("cut", [1, 5, 17, -1, -3])
def test_truncated_file(tmp_path: pathlib.Path, cut: int) -> None:
    full = _relu_model().SerializeToString()
    p = tmp_path / "cut.onnx"
    p.write_bytes(full[:cut])
    expect_error(ModelLoadError, p, "cut.onnx")


def test_truncated_inside_big_weight(tmp_path: pathlib.Path) -> None:
    # The cut falls inside a raw_data field the wire scanner would map: still a clean error.
    w = numpy_helper.from_array(np.ones(4096, np.float32), "w")
    full = _model([helper.make_node("Add", ["x", "w"], ["y"])], inputs=[_vi("x", [4096])],
                  outputs=[_vi("y", [4096])], inits=[w]).SerializeToString()
    p = tmp_path / "cut.onnx"
    p.write_bytes(full[: len(full) // 2])
    expect_error(ModelLoadError, p, "cut.onnx", "malformed")


def test_empty_file(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    expect_error(ModelLoadError, p, "empty", "empty.onnx")


def test_empty_bytes() -> None:
    expect_error(ModelLoadError, b"", "no graph")


def test_folder(tmp_path: pathlib.Path) -> None:
    expect_error(ModelLoadError, tmp_path, "folder", str(tmp_path))


def test_missing_path(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "nope.onnx"
    expect_error(ModelLoadError, p, "no such file", "nope.onnx")


def test_not_a_model_but_valid_protobuf() -> None:
    # A TensorProto parses as a ModelProto (fields just mean other things) but has no graph.
    t = numpy_helper.from_array(np.ones(3, np.float32), "t").SerializeToString()
    expect_error(ModelLoadError, t)


def test_wrong_argument_type() -> None:
    with pytest.raises(TypeError):
        lepton_ir.load(12345)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# wrong graphs
# ------------------------------------------------------------------------------------------------
def test_undefined_input() -> None:
    m = _model([helper.make_node("Relu", ["ghost"], ["y"], name="r")])
    expect_error(ModelLoadError, m, "'ghost'", "not defined")


def test_undefined_graph_output() -> None:
    m = _model([helper.make_node("Relu", ["x"], ["y"])], outputs=["nowhere"])
    expect_error(ModelLoadError, m, "'nowhere'")


def test_value_defined_twice() -> None:
    m = _model([helper.make_node("Relu", ["x"], ["y"], name="a"), helper.make_node("Neg", ["x"], ["y"], name="b")])
    expect_error(ModelLoadError, m, "'y'", "defined twice")


def test_node_output_redefines_input() -> None:
    m = _model([helper.make_node("Relu", ["x"], ["x"], name="a")], outputs=["x"])
    expect_error(ModelLoadError, m, "'x'", "defined twice")


def test_duplicate_initializer() -> None:
    w = numpy_helper.from_array(np.zeros(2, np.float32), "w")
    m = _model([helper.make_node("Add", ["x", "w"], ["y"])], inits=[w, w])
    expect_error(ModelLoadError, m, "'w'", "twice")


def test_unnamed_initializer() -> None:
    w = numpy_helper.from_array(np.zeros(2, np.float32), "")
    m = _model([helper.make_node("Relu", ["x"], ["y"])], inits=[w])
    expect_error(ModelLoadError, m, "no name")


def test_subgraph_input_shadows_outer_value() -> None:
    body = helper.make_graph([helper.make_node("Identity", ["x"], ["o"])], "body", [_vi("x")], [_vi("o")])
    m = _model([helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.array(True))),
                helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=body)])
    expect_error(ModelLoadError, m, "'x'", "shadows")


def test_unknown_element_type() -> None:
    t = TensorProto()
    t.name, t.data_type = "w", 999
    t.dims.extend([1])
    t.raw_data = b"\0" * 4
    m = _model([helper.make_node("Add", ["x", "w"], ["y"])], inits=[t])
    expect_error(ModelLoadError, m, "'w'", "999")


def test_cycle() -> None:
    m = _model([helper.make_node("Add", ["x", "b"], ["a"], name="n1"), helper.make_node("Relu", ["a"], ["b"], name="n2")],
               outputs=["b"])
    expect_error(GraphCycleError, m, "cycle", "'n1'", "'n2'")


def test_self_loop() -> None:
    m = _model([helper.make_node("Add", ["x", "y"], ["y"], name="selfie")])
    expect_error(GraphCycleError, m, "cycle", "'selfie'")


def test_cycle_in_subgraph() -> None:
    body = helper.make_graph([helper.make_node("Neg", ["q"], ["p"], name="inner1"),
                              helper.make_node("Neg", ["p"], ["q"], name="inner2")], "body", [], [_vi("q")])
    m = _model([helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.array(True))),
                helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=body)])
    expect_error(GraphCycleError, m, "cycle", "'inner1'")


def test_unsorted_but_acyclic_imports_sorted() -> None:
    # Not hostile, the other side of the cycle check: out-of-order nodes are legal input.
    m = _model([helper.make_node("Neg", ["a"], ["y"], name="second"), helper.make_node("Relu", ["x"], ["a"], name="first")])
    g = lepton_ir.load(m).graph
    assert [n.name for n in g] == ["first", "second"]


def test_unknown_op_imports_and_round_trips() -> None:
    m = _model([helper.make_node("Frobnicate", ["x"], ["y"], domain="acme.ops", flavour="lemon", level=3)],
               opsets=(("", 17), ("acme.ops", 1)))
    model = lepton_ir.load(m)
    (n,) = model.graph
    assert (n.domain, n.op_type, n.attr("flavour"), n.attr("level")) == ("acme.ops", "Frobnicate", "lemon", 3)
    model.verify()
    back = lepton_ir.to_onnx(model)
    assert back.graph.node[0].op_type == "Frobnicate" and back.graph.node[0].domain == "acme.ops"


def test_unknown_op_in_default_domain_imports() -> None:
    m = _model([helper.make_node("NoSuchOnnxOp", ["x"], ["y"])])
    model = lepton_ir.load(m)
    assert model.graph.first().op_type == "NoSuchOnnxOp"


# ------------------------------------------------------------------------------------------------
# huge declared shapes
# ------------------------------------------------------------------------------------------------
def _huge_tensor(data: bytes | None = None, floats: list[float] | None = None) -> TensorProto:
    t = TensorProto()
    t.name = "huge_w"
    t.data_type = TensorProto.FLOAT
    t.dims.extend([10**6, 10**6])  # 10^12 elements, 4 TB as float32
    if data is not None:
        t.raw_data = data
    if floats is not None:
        t.float_data.extend(floats)
    return t


@pytest.mark.parametrize("kind", ["raw4", "raw4096", "float_data"])
def test_huge_declared_initializer(tmp_path: pathlib.Path, kind: str) -> None:
    # 4096 bytes of raw_data are big enough for the wire scanner to map: that path checks too.
    t = _huge_tensor(data=b"\0" * 4 if kind == "raw4" else (b"\0" * 4096 if kind == "raw4096" else None),
                     floats=[1.0] if kind == "float_data" else None)
    m = _model([helper.make_node("Add", ["x", "huge_w"], ["y"])], inits=[t])
    expect_error(ModelTooLargeError, m, "'huge_w'", "1000000")
    p = tmp_path / "huge.onnx"
    p.write_bytes(m.SerializeToString())
    expect_error(ModelTooLargeError, p, "'huge_w'")


def test_huge_constant_attribute() -> None:
    m = _model([helper.make_node("Constant", [], ["y"], value=_huge_tensor(data=b"\0" * 4))], inputs=())
    expect_error(ModelTooLargeError, m, "'huge_w'")


def test_negative_dim_initializer() -> None:
    t = numpy_helper.from_array(np.zeros(4, np.float32), "neg")
    t.dims[0] = -4
    m = _model([helper.make_node("Add", ["x", "neg"], ["y"])], inits=[t])
    expect_error(ModelLoadError, m, "'neg'", "negative")


def test_huge_value_info_is_harmless() -> None:
    big = 10**12
    m = _model([helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Neg", ["h"], ["y"])],
               inputs=[_vi("x", [big, big])], outputs=[_vi("y", [big, big])], value_info=[_vi("h", [big, big, big])])
    model = lepton_ir.load(m)
    assert model.graph.inputs[0].shape.dims == (big, big)
    model.verify()
    back = lepton_ir.to_onnx(model)
    onnx.checker.check_model(back)


# ------------------------------------------------------------------------------------------------
# external data that leaves the folder or lies
# ------------------------------------------------------------------------------------------------
def test_external_data_good(layout) -> None:
    p = _ext_model(layout["model"], "w.bin")
    m = lepton_ir.load(p)
    w = m.graph.initializers["w"].const
    assert isinstance(w, MappedTensor)
    np.testing.assert_array_equal(w.numpy(), np.arange(4, dtype=np.float32))


def test_external_absolute_path(layout) -> None:
    p = _ext_model(layout["model"], str(layout["secret"]), length=16)
    expect_error(ExternalDataError, p, "absolute", str(layout["secret"]), "'w'")


def test_external_dotdot(layout) -> None:
    p = _ext_model(layout["model"], "../outside/secret.bin", length=16)
    expect_error(ExternalDataError, p, "'..'", "../outside/secret.bin")


def test_external_dotdot_hidden_in_middle(layout) -> None:
    p = _ext_model(layout["model"], "sub/../../outside/secret.bin", length=16)
    expect_error(ExternalDataError, p, "sub/../../outside/secret.bin")


def test_external_backslash_dotdot(layout) -> None:
    p = _ext_model(layout["model"], "..\\outside\\secret.bin", length=16)
    expect_error(ExternalDataError, p, "'w'")


def test_external_symlink_out(layout) -> None:
    (layout["model"] / "link.bin").symlink_to(layout["secret"])
    p = _ext_model(layout["model"], "link.bin", length=16)
    expect_error(ExternalDataError, p, "link.bin", "outside")


def test_external_symlinked_folder_out(layout) -> None:
    (layout["model"] / "sub").symlink_to(layout["outside"], target_is_directory=True)
    p = _ext_model(layout["model"], "sub/secret.bin", length=16)
    expect_error(ExternalDataError, p, "sub/secret.bin", "outside")


def test_external_symlink_inside_is_fine(layout) -> None:
    (layout["model"] / "alias.bin").symlink_to(layout["model"] / "w.bin")
    p = _ext_model(layout["model"], "alias.bin")
    assert lepton_ir.load(p).graph.initializers["w"].const.numpy()[3] == 3.0


def test_external_nul_byte(layout) -> None:
    p = _ext_model(layout["model"], "w.bin\x00/../../outside/secret.bin")
    expect_error(ExternalDataError, p, "NUL", "'w'")


def test_external_missing_file(layout) -> None:
    p = _ext_model(layout["model"], "nothing.bin")
    expect_error(ExternalDataError, p, "nothing.bin", "does not exist")


def test_external_location_is_folder(layout) -> None:
    (layout["model"] / "adir").mkdir()
    p = _ext_model(layout["model"], "adir")
    expect_error(ExternalDataError, p, "adir")


def test_external_no_location(layout) -> None:
    p = _ext_model(layout["model"], "")
    expect_error(ExternalDataError, p, "'w'", "location")


def test_external_offset_past_end(layout) -> None:
    p = _ext_model(layout["model"], "w.bin", offset=8)
    expect_error(ExternalDataError, p, "'w'", "w.bin", "past the end")


def test_external_offset_far_past_end(layout) -> None:
    p = _ext_model(layout["model"], "w.bin", offset=2**62, length=16)
    expect_error(ExternalDataError, p, "'w'", "past the end")


def test_external_length_past_end(layout) -> None:
    p = _ext_model(layout["model"], "w.bin", dims=(1000,), length=4000)
    expect_error(ExternalDataError, p, "'w'", "past the end")


def test_external_length_disagrees_with_shape(layout) -> None:
    p = _ext_model(layout["model"], "w.bin", length=12)
    expect_error(ModelTooLargeError, p, "'w'", "[4]")


def test_external_negative_offset(layout) -> None:
    p = _ext_model(layout["model"], "w.bin", offset=-4)
    expect_error(ExternalDataError, p, "'w'", "negative")


def test_external_negative_length(layout) -> None:
    p = _ext_model(layout["model"], "w.bin", length=-16)
    expect_error(ExternalDataError, p, "'w'", "negative")


def test_external_non_numeric_offset(layout) -> None:
    p = _ext_model(layout["model"], "w.bin", offset="0x10")
    expect_error(ExternalDataError, p, "'w'", "non-numeric")


def test_external_huge_shape(layout) -> None:
    p = _ext_model(layout["model"], "w.bin", dims=(10**6, 10**6))
    expect_error(ModelLoadError, p, "'w'")


def test_external_data_from_bytes_is_refused(layout) -> None:
    p = _ext_model(layout["model"], "w.bin")
    expect_error(ExternalDataError, p.read_bytes(), "'w'", "file path")


def test_external_data_in_subgraph_attribute(layout) -> None:
    # A Constant inside an If branch pointing out of the folder: checked like initializers.
    t = _ext_tensor("cw", str(layout["secret"]), length=16)
    body = helper.make_graph([helper.make_node("Constant", [], ["o"], value=t)], "body", [], [_vi("o", [4])])
    m = _model([helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.array(True))),
                helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=body)], inputs=())
    p = layout["model"] / "sub.onnx"
    p.write_bytes(m.SerializeToString())
    expect_error(ExternalDataError, p, "absolute", "'cw'")


# ------------------------------------------------------------------------------------------------
# a model over 2 GB
# ------------------------------------------------------------------------------------------------
def test_model_over_2gb_is_mapped_and_saved_as_external_data(tmp_path: pathlib.Path) -> None:
    """>2 GB of weights: load maps them (no read), save must write external data.

    The weight file is sparse (`truncate`), so it costs no disk; save writes zero chunks as holes,
    so the copy is sparse too. Both are deleted at the end.
    """
    n = (2**31 + 2**22) // 4  # just over protobuf's 2 GiB limit, as float32 elements
    src = tmp_path / "src"
    src.mkdir()
    data = src / "big.bin"
    with open(data, "wb") as f:
        f.truncate(n * 4)
    t = _ext_tensor("big", "big.bin", dims=(n,), offset=0, length=n * 4)
    m = _model([helper.make_node("ReduceSum", ["big"], ["y"], keepdims=0)], inputs=(), outputs=[_vi("y", [])],
               inits=[t])
    mp = src / "big.onnx"
    mp.write_bytes(m.SerializeToString())
    try:
        import resource

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        model = lepton_ir.load(mp)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # KiB
        w = model.graph.initializers["big"].const
        assert isinstance(w, MappedTensor)  # mapped, not read
        assert grown < 256 * 1024, f"load grew peak RSS by {grown} KiB for a mapped tensor"
        assert w.nbytes == n * 4

        out = tmp_path / "out"
        lepton_ir.save(model, out / "big2.onnx")
        files = sorted(x.name for x in out.iterdir())
        assert files == ["big2.onnx", "big2.onnx.data"], files  # external data, no temp files left
        assert (out / "big2.onnx").stat().st_size < 1 << 20
        assert (out / "big2.onnx.data").stat().st_size >= n * 4
        assert (out / "big2.onnx.data").stat().st_blocks * 512 < 1 << 28, "zeros were written, not holes"
        proto = onnx.load(out / "big2.onnx", load_external_data=False)
        (init,) = proto.graph.initializer
        assert init.data_location == TensorProto.EXTERNAL
        again = lepton_ir.load(out / "big2.onnx")
        w2 = again.graph.initializers["big"].const
        assert isinstance(w2, MappedTensor) and w2.nbytes == n * 4
        assert not w2.numpy()[-1024:].any()
    finally:
        for p in list(tmp_path.rglob("*")):
            if p.is_file():
                p.unlink()


def test_forced_external_data_round_trip(tmp_path: pathlib.Path) -> None:
    w = np.arange(4096, dtype=np.float32)
    m = _model([helper.make_node("Add", ["x", "w"], ["y"])], inputs=[_vi("x", [4096])], outputs=[_vi("y", [4096])],
               inits=[numpy_helper.from_array(w, "w")])
    model = lepton_ir.load(m)
    lepton_ir.save(model, tmp_path / "m.onnx", external_data=True)
    assert (tmp_path / "m.onnx.data").exists()
    assert oct((tmp_path / "m.onnx").stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    back = lepton_ir.load(tmp_path / "m.onnx")
    np.testing.assert_array_equal(back.graph.initializers["w"].const.numpy(), w)


def _umask() -> int:
    u = os.umask(0o022)
    os.umask(u)
    return u


# ------------------------------------------------------------------------------------------------
# the wire scanner must see what protobuf sees
# ------------------------------------------------------------------------------------------------
def test_constant_sharing_a_mapped_initializers_name_keeps_its_data(tmp_path: pathlib.Path) -> None:
    """Regression: the scanner cuts top-level initializers by name; a Constant's tensor of the same
    name (with float_data) used to be given the initializer's mapped bytes."""
    w = numpy_helper.from_array(np.arange(1024, dtype=np.float32), "w")
    c = helper.make_tensor("w", TensorProto.FLOAT, [1024], np.ones(1024, np.float32).tolist())
    m = _model([helper.make_node("Constant", [], ["c"], value=c), helper.make_node("Add", ["w", "c"], ["y"])],
               inputs=(), outputs=[_vi("y", [1024])], inits=[w])
    p = tmp_path / "clash.onnx"
    p.write_bytes(m.SerializeToString())
    model = lepton_ir.load(p)
    np.testing.assert_array_equal(model.graph.first().attr("value").numpy(), np.ones(1024, np.float32))
    assert isinstance(model.graph.initializers["w"].const, MappedTensor)


def test_repeated_raw_data_field_last_one_wins(tmp_path: pathlib.Path) -> None:
    """Regression: protobuf keeps the last of repeated raw_data fields; the scanner used to cut the
    last and let the first show through, so Lepton and ONNX Runtime saw different weights."""
    from lepton_ir import wire

    first = np.arange(1024, dtype=np.float32).tobytes()
    last = np.full(1024, 7, np.float32).tobytes()
    t = TensorProto()
    t.name, t.data_type = "w", TensorProto.FLOAT
    t.dims.extend([1024])
    tb = t.SerializeToString()
    for raw in (first, last):
        tb += wire.tag(wire.T_RAW_DATA, wire.WIRE_LEN) + wire.encode_varint(len(raw)) + raw
    m = _model([helper.make_node("Identity", ["w"], ["y"])], inputs=(), outputs=[_vi("y", [1024])])
    gb = m.graph.SerializeToString() + wire.tag(wire.GRAPH_INITIALIZER, wire.WIRE_LEN) + wire.encode_varint(len(tb)) + tb
    m.ClearField("graph")
    data = m.SerializeToString() + wire.tag(wire.MODEL_GRAPH, wire.WIRE_LEN) + wire.encode_varint(len(gb)) + gb
    ref = onnx.ModelProto()
    ref.ParseFromString(data)
    want = numpy_helper.to_array(ref.graph.initializer[0])
    assert want[0] == 7
    for src in (data, tmp_path / "dup.onnx"):
        if isinstance(src, pathlib.Path):
            src.write_bytes(data)
        got = lepton_ir.load(src).graph.initializers["w"].const.numpy()
        np.testing.assert_array_equal(got, want)
