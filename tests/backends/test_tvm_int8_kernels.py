"""The tensorized int8 kernels (backends/tvm/int8_kernels.py): ConvInteger / MatMulInteger compiled
by tvm-cpu onto the host's 8-bit dot-product instructions, checked bit for bit against ONNX's
reference evaluator (an independent implementation of the ops), over the shapes and zero-point
forms the kernels special-case. Real TVM and LLVM; the assembly is read to show the instructions
are there."""

from __future__ import annotations

import zlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh
from onnx.reference import ReferenceEvaluator

tvm = pytest.importorskip("tvm")

import lepton_ir  # noqa: E402
from lepton_backends import get_backend  # noqa: E402
from lepton_backends.tvm import int8_kernels, load_artifact, lower  # noqa: E402
from lepton_backends.tvm.backend import prepare_for_tvm  # noqa: E402
from lepton_backends.tvm.targets import resolve_target  # noqa: E402

HOST = int8_kernels.select(resolve_target("native"))
needs_dot = pytest.mark.skipif(HOST is None, reason="host CPU has no int8 dot-product instructions (AVX2)")

_NP = {T.UINT8: np.uint8, T.INT8: np.int8}


@pytest.fixture(autouse=True)
def _small_convs_use_the_kernel(monkeypatch, request):
    """The kernel skips convs with a small reduction (MIN_CONV_REDUCTION: slower there); the
    correctness tests use small shapes, so they lower the threshold to reach the kernel."""
    if "min_reduction" not in request.node.name:
        monkeypatch.setattr(int8_kernels, "MIN_CONV_REDUCTION", 0)


def _conv_model(x_type: int, shape, w: np.ndarray, *, x_zp=None, runtime_zp=False, w_zp=None, **attrs):
    inputs = [h.make_tensor_value_info("x", x_type, shape)]
    inits = [nh.from_array(w, "w")]
    names = ["x", "w"]
    if runtime_zp:
        inputs.append(h.make_tensor_value_info("xzp", x_type, []))
        names.append("xzp")
    elif x_zp is not None:
        inits.append(nh.from_array(np.array(x_zp, _NP[x_type]), "xzp"))
        names.append("xzp")
    if w_zp is not None:
        if len(names) == 2:
            inits.append(nh.from_array(np.array(0, _NP[x_type]), "xzp"))
            names.append("xzp")
        inits.append(nh.from_array(w_zp, "wzp"))
        names.append("wzp")
    node = h.make_node("ConvInteger", names, ["y"], **attrs)
    g = h.make_graph([node], "conv", inputs, [h.make_tensor_value_info("y", T.INT32, None)], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 13)])


def _matmul_model(a_type: int, shape, b: np.ndarray, *, a_zp=None, runtime_zp=False, b_zp=None):
    inputs = [h.make_tensor_value_info("a", a_type, shape)]
    inits = [nh.from_array(b, "b")]
    names = ["a", "b"]
    if runtime_zp:
        inputs.append(h.make_tensor_value_info("azp", a_type, []))
        names.append("azp")
    elif a_zp is not None or b_zp is not None:
        inits.append(nh.from_array(np.array(a_zp or 0, _NP[a_type]), "azp"))
        names.append("azp")
    if b_zp is not None:
        inits.append(nh.from_array(b_zp, "bzp"))
        names.append("bzp")
    g = h.make_graph([h.make_node("MatMulInteger", names, ["y"])], "mm", inputs,
                     [h.make_tensor_value_info("y", T.INT32, None)], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 13)])


def _compile(proto: onnx.ModelProto, tmp_path, shapes: dict):
    out = tmp_path / "art"
    get_backend("tvm-cpu")().compile(lepton_ir.load(proto), out, target="native", options={"input-shapes": shapes})
    return load_artifact(out)


def _kernels_used(proto: onnx.ModelProto, shapes: dict) -> list[str]:
    mod = lower.to_relax(lepton_ir.to_onnx(prepare_for_tvm(lepton_ir.load(proto), shapes)), shapes, target="native")
    return sorted(g.name_hint for g in mod.functions if g.name_hint.startswith("lepton_int8"))


def _check(proto, tmp_path, feeds_list, shapes) -> None:
    runner = _compile(proto, tmp_path, shapes)
    ref = ReferenceEvaluator(proto)
    for feeds in feeds_list:
        got = next(iter(runner.run(feeds).values()))
        want = ref.run(None, feeds)[0]
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, want)


CONV_CASES = {
    # name: (x dtype, input shape, weight shape, attrs, x_zp)
    "3x3-pad1-u8-zp0": (T.UINT8, [1, 16, 10, 12], (16, 16, 3, 3), dict(pads=[1, 1, 1, 1]), 0),
    "3x3-stride2-u8-zp37": (T.UINT8, [1, 8, 13, 11], (24, 8, 3, 3), dict(pads=[1, 1, 1, 1], strides=[2, 2]), 37),
    "1x1-odd-channels-s8": (T.INT8, [2, 5, 7, 7], (8, 5, 1, 1), {}, None),
    "5x5-dilated-asym-pad-u8": (T.UINT8, [1, 3, 17, 15], (16, 3, 5, 5), dict(pads=[2, 1, 0, 3], dilations=[2, 1]), 128),
    "7x7-stride2-s8-zp": (T.INT8, [1, 4, 20, 20], (32, 4, 7, 7), dict(pads=[3, 3, 3, 3], strides=[2, 2]), -5),
}


@needs_dot
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv_integer_tensorized_bit_exact(case, tmp_path):
    x_type, shape, wshape, attrs, zp = CONV_CASES[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    bound = HOST.weight_bound if HOST.weight_bound < 128 else 127
    w = rng.integers(-bound, bound + 1, wshape).astype(np.int8)
    proto = _conv_model(x_type, shape, w, x_zp=zp, **attrs)
    assert _kernels_used(proto, {"x": shape}) == ["lepton_int8_conv2d"]
    lo, hi = (0, 256) if x_type == T.UINT8 else (-128, 128)
    feeds = [{"x": rng.integers(lo, hi, shape).astype(_NP[x_type])} for _ in range(2)]
    feeds.append({"x": np.full(shape, hi - 1, _NP[x_type])})  # the largest products everywhere
    _check(proto, tmp_path, feeds, {"x": shape})


@needs_dot
def test_conv_integer_runtime_zero_point_and_weight_zero_point(tmp_path):
    """A run-time activation zero point (quantize_dynamic's form) and a per-channel weight zero
    point folded into the constant weight."""
    rng = np.random.default_rng(1)
    shape = [1, 8, 9, 9]
    w = rng.integers(-40, 40, (16, 8, 3, 3)).astype(np.int8)
    wzp = rng.integers(-20, 20, 16).astype(np.int8)
    proto = _conv_model(T.UINT8, shape, w, runtime_zp=True, w_zp=wzp, pads=[1, 1, 1, 1])
    assert _kernels_used(proto, {"x": shape, "xzp": []}) == ["lepton_int8_conv2d"]
    feeds = [{"x": rng.integers(0, 256, shape).astype(np.uint8), "xzp": np.array(z, np.uint8)} for z in (0, 99, 255)]
    _check(proto, tmp_path, feeds, {"x": shape, "xzp": []})


@needs_dot
def test_weights_beyond_the_exact_range_take_the_generic_path(tmp_path):
    """AVX2's int16 pair sums saturate with |w| > 64: such weights must not use the kernel."""
    rng = np.random.default_rng(2)
    shape = [1, 8, 6, 6]
    w = rng.integers(-127, 128, (8, 8, 3, 3)).astype(np.int8)
    w[0, 0, 0, 0] = -127
    proto = _conv_model(T.UINT8, shape, w, pads=[1, 1, 1, 1])
    expected = ["lepton_int8_conv2d"] if HOST.weight_bound >= 127 else []
    assert _kernels_used(proto, {"x": shape}) == expected
    _check(proto, tmp_path, [{"x": np.full(shape, 255, np.uint8)}], {"x": shape})


MATMUL_CASES = {
    # name: (a dtype, a shape, b shape, a_zp, b_zp per column?)
    "2d-u8-zp0": (T.UINT8, [16, 64], (64, 32), None, False),
    "3d-u8-zp-k-odd": (T.UINT8, [2, 7, 50], (50, 16), 131, False),
    "s8-per-column-bzp": (T.INT8, [5, 36], (36, 24), 3, True),
    "one-row": (T.UINT8, [1, 96], (96, 40), 255, False),
}


@needs_dot
@pytest.mark.parametrize("case", sorted(MATMUL_CASES))
def test_matmul_integer_tensorized_bit_exact(case, tmp_path):
    a_type, shape, bshape, zp, per_col = MATMUL_CASES[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    b = rng.integers(-50, 51, bshape).astype(np.int8)
    bzp = rng.integers(-10, 10, bshape[1]).astype(np.int8) if per_col else None
    proto = _matmul_model(a_type, shape, b, a_zp=zp, b_zp=bzp)
    assert _kernels_used(proto, {"a": shape}) == ["lepton_int8_matmul"]
    lo, hi = (0, 256) if a_type == T.UINT8 else (-128, 128)
    feeds = [{"a": rng.integers(lo, hi, shape).astype(_NP[a_type])} for _ in range(2)]
    _check(proto, tmp_path, feeds, {"a": shape})


@needs_dot
def test_matmul_integer_runtime_zero_point(tmp_path):
    """quant8-dynamic's form: DynamicQuantizeLinear's u8 output and its run-time zero point."""
    rng = np.random.default_rng(4)
    b = rng.integers(-63, 64, (48, 64)).astype(np.int8)
    proto = _matmul_model(T.UINT8, [12, 48], b, runtime_zp=True)
    shapes = {"a": [12, 48], "azp": []}
    assert _kernels_used(proto, shapes) == ["lepton_int8_matmul"]
    feeds = [{"a": rng.integers(0, 256, (12, 48)).astype(np.uint8), "azp": np.array(z, np.uint8)} for z in (0, 128, 201)]
    _check(proto, tmp_path, feeds, shapes)


@needs_dot
def test_compiled_code_uses_the_dot_product_instructions():
    rng = np.random.default_rng(5)
    proto = _conv_model(T.UINT8, [1, 8, 8, 8], rng.integers(-9, 9, (16, 8, 3, 3)).astype(np.int8), pads=[1, 1, 1, 1])
    shapes = {"x": [1, 8, 8, 8]}
    mod = lower.to_relax(lepton_ir.to_onnx(prepare_for_tvm(lepton_ir.load(proto), shapes)), shapes, target="native")
    ex = lower.build(mod, "native")
    asm = "".join(m.inspect_source("asm") for m in [ex.mod, *ex.mod.imports] if _has_asm(m))
    assert "vpmaddubsw" in asm and "vpmaddwd" in asm


def _has_asm(m) -> bool:
    try:
        m.inspect_source("asm")
        return True
    except Exception:  # noqa: BLE001  modules without assembly (the VM bytecode)
        return False


def test_switch_off_and_targets_without_dot_products(monkeypatch):
    """LEPTON_TVM_INT8_DOT=0 and cores without the instructions (Cortex-A72: no dotprod) keep
    the generic lowering; Neoverse-N1 gets sdot."""
    assert int8_kernels.select(resolve_target("cortex-a72")) is None
    assert int8_kernels.select(resolve_target("neoverse-n1")) is int8_kernels.SDOT
    assert int8_kernels.select(resolve_target("x86-64-avx2")) is int8_kernels.AVX2
    monkeypatch.setenv("LEPTON_TVM_INT8_DOT", "0")
    assert int8_kernels.select(resolve_target("x86-64-avx2")) is None


@pytest.mark.parametrize("rows,blocks,want_acc", [([7, 7], 4, 7), ([1, 1], 16, 4), ([56, 56], 8, 8), ([3], 1, 3)])
def test_register_tile_fits_the_register_file(rows, blocks, want_acc):
    fs, nj = int8_kernels._tile(rows, blocks, int8_kernels.AVX2)
    acc = int(np.prod(fs)) * nj
    assert all(e % f == 0 for e, f in zip(rows, fs)) and blocks % nj == 0
    assert acc == want_acc and acc + nj + 1 <= 16


@needs_dot
def test_symbolic_dims_take_the_generic_path(tmp_path):
    """A MatMulInteger whose activation keeps symbolic dims (shapes not pinned) must compile on
    the generic path, not crash (the kernel needs static extents)."""
    rng = np.random.default_rng(6)
    b = rng.integers(-64, 65, (16, 8)).astype(np.int8)
    for dims in (["m", 16], ["m", "k"]):
        proto = _matmul_model(T.UINT8, dims, b, a_zp=3)
        mod = lower.to_relax(proto, target="native")
        assert not [g for g in mod.functions if g.name_hint.startswith("lepton_int8")]
        out = tmp_path / "-".join(map(str, dims))
        get_backend("tvm-cpu")().compile(lepton_ir.load(proto), out, target="native")
        feeds = {"a": rng.integers(0, 256, (4, 16)).astype(np.uint8)}
        got = next(iter(load_artifact(out).run(feeds).values()))
        np.testing.assert_array_equal(got, ReferenceEvaluator(proto).run(None, feeds)[0])


@needs_dot
@pytest.mark.parametrize("edge", [64, 65])
def test_matmul_weight_range_edge(edge, tmp_path):
    """|w| = 64 is the largest weight AVX2's int16 pair sums hold exactly (255 * 2 * 64 = 32640):
    it must use the kernel and stay exact with all-255 activations; 65 must fall back."""
    b = np.full((32, 16), -edge, np.int8)
    b[::2] = edge
    proto = _matmul_model(T.UINT8, [4, 32], b)
    used = _kernels_used(proto, {"a": [4, 32]})
    assert used == (["lepton_int8_matmul"] if edge <= HOST.weight_bound else [])
    feeds = [{"a": np.full((4, 32), 255, np.uint8)}, {"a": np.full((4, 32), 255, np.uint8) * (np.arange(32) % 2).astype(np.uint8)}]
    _check(proto, tmp_path, feeds, {"a": [4, 32]})


@needs_dot
def test_fused_producer_and_epilogue_chain(tmp_path):
    """QuantizeLinear -> ConvInteger -> Cast/Mul/Add/Relu, a second consumer of the conv result
    and a MatMulInteger with a scale epilogue: the fused kernels (epilogue computed from the
    register tile) against ONNX's reference evaluator."""
    rng = np.random.default_rng(7)
    w = rng.integers(-60, 61, (16, 8, 3, 3)).astype(np.int8)
    b = rng.integers(-60, 61, (16 * 6 * 6, 24)).astype(np.int8)
    nodes = [
        h.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        h.make_node("ConvInteger", ["xq", "w", "xz"], ["acc"], pads=[1, 1, 1, 1], strides=[2, 2]),
        h.make_node("Cast", ["acc"], ["accf"], to=T.FLOAT),
        h.make_node("Mul", ["accf", "s"], ["scaled"]),
        h.make_node("Add", ["scaled", "bias"], ["biased"]),
        h.make_node("Relu", ["biased"], ["y1"]),
        h.make_node("Neg", ["acc"], ["y2"]),  # a second consumer of the int32 result
        h.make_node("QuantizeLinear", ["y1", "ys", "yz"], ["yq"]),
        h.make_node("Reshape", ["yq", "flat"], ["yqf"]),
        h.make_node("MatMulInteger", ["yqf", "b", "yz"], ["macc"]),
        h.make_node("Cast", ["macc"], ["maccf"], to=T.FLOAT),
        h.make_node("Mul", ["maccf", "ms"], ["y3"]),
    ]
    inits = [nh.from_array(np.array(0.05, np.float32), "xs"), nh.from_array(np.array(120, np.uint8), "xz"),
             nh.from_array(w, "w"), nh.from_array(np.float32(0.01) * np.ones((1, 16, 1, 1), np.float32), "s"),
             nh.from_array(rng.standard_normal((1, 16, 1, 1)).astype(np.float32), "bias"),
             nh.from_array(np.array(0.04, np.float32), "ys"), nh.from_array(np.array(0, np.uint8), "yz"),
             nh.from_array(np.array([1, -1], np.int64), "flat"), nh.from_array(b, "b"),
             nh.from_array(np.array(0.001, np.float32), "ms")]
    g = h.make_graph(nodes, "chain", [h.make_tensor_value_info("x", T.FLOAT, [1, 8, 12, 12])],
                     [h.make_tensor_value_info(n, t, None) for n, t in (("y2", T.INT32), ("y3", T.FLOAT))], inits)
    proto = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    shapes = {"x": [1, 8, 12, 12]}
    assert _kernels_used(proto, shapes) == ["lepton_int8_conv2d", "lepton_int8_matmul"]
    runner = _compile(proto, tmp_path, shapes)
    ref = ReferenceEvaluator(proto)
    for _ in range(2):
        feeds = {"x": rng.standard_normal((1, 8, 12, 12)).astype(np.float32) * 3}
        got = list(runner.run(feeds).values())
        want = ref.run(None, feeds)
        np.testing.assert_array_equal(got[0], want[0])
        # y3: integer up to the last float Mul, and the float rescale before QuantizeLinear did
        # not land on a rounding boundary for these seeds, so equal up to float32 rounding.
        np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-7)


@needs_dot
def test_min_reduction_small_convs_take_the_generic_path(tmp_path):
    """Convs with fewer than MIN_CONV_REDUCTION products per output keep the generic path (it
    was measured faster there) and stay exact; larger ones get the kernel."""
    rng = np.random.default_rng(8)
    small = _conv_model(T.UINT8, [1, 12, 10, 10], rng.integers(-60, 61, (16, 12, 1, 1)).astype(np.int8))
    large = _conv_model(T.UINT8, [1, 16, 10, 10], rng.integers(-60, 61, (16, 16, 3, 3)).astype(np.int8), pads=[1, 1, 1, 1])
    assert 12 < int8_kernels.MIN_CONV_REDUCTION <= 16 * 9
    assert _kernels_used(small, {"x": [1, 12, 10, 10]}) == []
    assert _kernels_used(large, {"x": [1, 16, 10, 10]}) == ["lepton_int8_conv2d"]
    _check(small, tmp_path, [{"x": rng.integers(0, 256, (1, 12, 10, 10)).astype(np.uint8)}], {"x": [1, 12, 10, 10]})
