"""Tests for lepton_ir.testing.strategies: generated models are valid ONNX, run in ONNX Runtime with
finite outputs, cover the op set, and honour ops/bias restrictions and pattern presets."""

from __future__ import annotations

import collections
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from lepton_ir.reference import ort_session
from lepton_ir.testing.strategies import (
    OPS,
    PRESETS,
    inputs_for,
    model_inputs,
    onnx_models,
    op_names,
    pattern_models,
)

N_MODELS = 2000
ALL_DTYPES = ("float32", "float16", "int64")

# Generation is deliberately expensive per example (a whole ONNX model), so too_slow would fire;
# nothing is filtered heavily, so the other health checks stay on.
_SETTINGS = dict(deadline=None, database=None, derandomize=True, phases=[Phase.generate],
                 suppress_health_check=[HealthCheck.too_slow])


def _collect(strategy: st.SearchStrategy[onnx.ModelProto], n: int) -> list[onnx.ModelProto]:
    """Draw n examples deterministically (derandomized) without shrinking."""
    out: list[onnx.ModelProto] = []

    @settings(max_examples=n, **_SETTINGS)
    @given(strategy)
    def run(m: onnx.ModelProto) -> None:
        out.append(m)

    run()
    return out


def _session(m: onnx.ModelProto) -> ort.InferenceSession:
    return ort_session(m, optimize=True, threads=1)


def _dims(vi: onnx.ValueInfoProto) -> list[int | str | None]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in vi.type.tensor_type.shape.dim]


def _shape_mismatches(m: onnx.ModelProto) -> list[str]:
    """Compare the generator's declared shapes with ONNX's own (strict) shape inference."""
    declared = {vi.name: _dims(vi) for vi in list(m.graph.value_info) + list(m.graph.output)}
    bare = onnx.ModelProto()
    bare.CopyFrom(m)
    del bare.graph.value_info[:]
    for o in bare.graph.output:
        o.type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(bare, strict_mode=True)
    bad = []
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        if vi.name not in declared or not vi.type.tensor_type.HasField("shape"):
            continue
        got, want = _dims(vi), declared[vi.name]
        if len(got) != len(want):
            bad.append(f"{vi.name}: rank {got} vs declared {want}")
            continue
        for g, w in zip(got, want):
            if isinstance(g, int) and g != w or isinstance(g, str) and isinstance(w, str) and g != w and not g.startswith("unk"):
                bad.append(f"{vi.name}: inferred {got} vs declared {want}")
                break
    return bad


def validate(m: onnx.ModelProto, seed: int = 0) -> None:
    """Raise if m is not a valid ONNX model that ORT runs to finite outputs of the declared shapes."""
    onnx.checker.check_model(m, full_check=True)
    bad = _shape_mismatches(m)
    if bad:
        raise AssertionError("shape mismatch: " + "; ".join(bad[:3]))
    feeds = inputs_for(m, seed)
    outs = _session(m).run(None, feeds)
    for o, vi in zip(outs, m.graph.output):
        if o.dtype.kind == "f" and not np.isfinite(o).all():
            raise AssertionError(f"non-finite values in output {vi.name}")
        want = _dims(vi)
        if len(want) != o.ndim or any(isinstance(w, int) and w != g for w, g in zip(want, o.shape)):
            raise AssertionError(f"output {vi.name}: runtime shape {o.shape} vs declared {want}")


def _ops_of(m: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in m.graph.node}


def _mixed_strategy() -> st.SearchStrategy[onnx.ModelProto]:
    # Mostly the default float32 models; a quarter with float16/int64 tensors too.
    return st.one_of(onnx_models(), onnx_models(), onnx_models(), onnx_models(dtypes=ALL_DTYPES))


def test_2000_models_valid_in_ort_and_covering() -> None:
    """(1) every one of 2,000 generated models passes the full checker, matches ONNX shape inference
    and runs in ORT with finite outputs; (2) over the same models >= 40 op types and symbolic dims
    appear.  One test, not two: under pytest-xdist two tests could land on different workers and
    generate the 2,000 models twice."""
    t0 = time.perf_counter()
    models = _collect(_mixed_strategy(), N_MODELS)
    t_gen = time.perf_counter() - t0
    failures: list[tuple[int, str]] = []
    for i, m in enumerate(models):
        try:
            validate(m, seed=i)
        except Exception as e:  # record, keep going: the rate is the figure of merit
            failures.append((i, f"{type(e).__name__}: {str(e)[:300]}"))
    rate = 1 - len(failures) / len(models)
    print(f"\nvalidity: {len(models) - len(failures)}/{len(models)} = {rate:.2%} "
          f"(generation {t_gen:.1f}s, total {time.perf_counter() - t0:.1f}s)")
    assert len(models) >= N_MODELS * 0.95, len(models)
    assert not failures, failures[:5]
    _check_coverage(models)


def _check_coverage(models: list[onnx.ModelProto]) -> None:
    counts: collections.Counter[str] = collections.Counter(n.op_type for m in models for n in m.graph.node)
    print("\nop-type distribution over", len(models), "models:")
    for op, c in counts.most_common():
        print(f"  {op:22s} {c}")
    sizes = collections.Counter(sum(n.op_type != "Constant" for n in m.graph.node) for m in models)
    print("compute-node counts:", sorted(sizes.items()))
    required = {"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "LayerNormalization", "Add", "Sub",
                "Mul", "Div", "Pow", "Max", "Min", "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish",
                "Erf", "Tanh", "Softmax", "Exp", "Sqrt", "Abs", "Neg", "Reshape", "Transpose", "Flatten", "Concat",
                "Split", "Slice", "Squeeze", "Unsqueeze", "Pad", "MaxPool", "AveragePool", "GlobalAveragePool",
                "ReduceMean", "ReduceSum", "ReduceMax", "Resize", "Cast", "Where", "Identity", "Dropout", "Expand",
                "Shape", "Gather", "Constant"}
    assert len(counts) >= 40
    assert required <= set(counts), sorted(required - set(counts))
    symbolic = sum(any(isinstance(d, str) for vi in m.graph.input for d in _dims(vi)) for m in models)
    print(f"models with symbolic input dims: {symbolic}")
    assert symbolic >= len(models) // 10
    dtypes = collections.Counter(vi.type.tensor_type.elem_type for m in models for vi in m.graph.value_info)
    assert onnx.TensorProto.FLOAT16 in dtypes and onnx.TensorProto.INT64 in dtypes
    # fan-out (a value read by two nodes) and residual joins (binary op of two computed values)
    fanout = residual = 0
    for m in models:
        uses = collections.Counter(i for n in m.graph.node for i in n.input if i)
        produced = {o for n in m.graph.node for o in n.output if n.op_type != "Constant"}
        fanout += any(uses[v] >= 2 for v in produced)
        residual += any(n.op_type in ("Add", "Mul", "Sub") and len(set(n.input) & produced) == 2 for n in m.graph.node)
    print(f"models with fan-out: {fanout}, with two-branch joins: {residual}")
    assert fanout > len(models) // 10 and residual > len(models) // 50


def test_ops_restriction() -> None:
    allowed = {"Conv", "Relu", "MaxPool", "BatchNormalization"}
    models = _collect(onnx_models(ops=sorted(allowed), min_nodes=2, max_nodes=6), 60)
    assert models
    for m in models:
        assert _ops_of(m) - {"Constant"} <= allowed, _ops_of(m)  # weights may be Constant nodes
        assert 2 <= sum(n.op_type != "Constant" for n in m.graph.node) <= 6
    seen = set().union(*(_ops_of(m) for m in models)) - {"Constant"}
    assert seen == allowed, seen
    validate(models[-1])


def test_bias_increases_frequency() -> None:
    def share(models: list[onnx.ModelProto], op: str) -> float:
        nodes = [n.op_type for m in models for n in m.graph.node if n.op_type != "Constant"]
        return nodes.count(op) / max(len(nodes), 1)

    plain = _collect(onnx_models(), 150)
    biased = _collect(onnx_models(bias={"Softmax": 20.0}), 150)
    print(f"\nSoftmax share: plain {share(plain, 'Softmax'):.3f}, biased {share(biased, 'Softmax'):.3f}")
    assert share(biased, "Softmax") > 3 * share(plain, "Softmax")


def test_bad_arguments_rejected() -> None:
    with pytest.raises(ValueError):
        onnx_models(ops=["NoSuchOp"])
    with pytest.raises(ValueError):
        onnx_models(dtypes=("float64",))
    with pytest.raises(ValueError):
        pattern_models("no-such-pattern")
    assert set(PRESETS) <= set(op_names()) == set(OPS)


def _producer(m: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in m.graph.node for o in n.output}


def _has_pattern(m: onnx.ModelProto, name: str) -> bool:
    prod = _producer(m)

    def src(n: onnx.NodeProto, i: int = 0) -> str | None:
        p = prod.get(n.input[i]) if len(n.input) > i else None
        return p.op_type if p is not None else None

    nodes = list(m.graph.node)
    acts = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSwish", "HardSigmoid", "Tanh"}
    if name == "conv-bn":
        return any(n.op_type == "BatchNormalization" and src(n) == "Conv" for n in nodes)
    if name == "conv-act":
        return any(n.op_type in acts and src(n) in ("Conv", "BatchNormalization") for n in nodes)
    if name == "matmul-add":
        return any(n.op_type == "Add" and "MatMul" in (src(n, 0), src(n, 1)) for n in nodes)
    if name == "transpose-chain":
        return any(n.op_type == "Transpose" and src(n) == "Transpose" for n in nodes)
    if name == "layernorm-decomposed":
        return any(n.op_type == "Sqrt" and src(n) == "Add" and src(prod[n.input[0]]) == "ReduceMean" for n in nodes)
    if name == "gelu-erf":
        return any(n.op_type == "Erf" and src(n) == "Div" for n in nodes)
    if name == "attention":
        return any(n.op_type == "MatMul" and src(n) == "Softmax" for n in nodes)
    raise KeyError(name)


@pytest.mark.parametrize("pattern", sorted(PRESETS))
def test_pattern_presets(pattern: str) -> None:
    models = _collect(pattern_models(pattern), 15)
    assert len(models) >= 10
    for m in models:
        assert _has_pattern(m, pattern), [n.op_type for n in m.graph.node]
    for i, m in enumerate(models[:5]):
        validate(m, seed=i)


def test_inputs_for_consistent_symbolic_sizes() -> None:
    models = [m for m in _collect(onnx_models(symbolic_dims=True), 100)
              if sum(isinstance(d, str) for vi in m.graph.input for d in _dims(vi)) >= 1]
    assert models
    for m in models[:20]:
        feeds = inputs_for(m, seed=3, dim_sizes={"N": 2})
        for vi in m.graph.input:
            for d, size in zip(_dims(vi), feeds[vi.name].shape):
                if d == "N":
                    assert size == 2
                elif isinstance(d, int):
                    assert size == d
        validate(m, seed=5)


@settings(max_examples=20, **_SETTINGS)
@given(data=st.data())
def test_strategy_composes_with_given(data: st.DataObject) -> None:
    """The intended plugin-author usage: draw a model, then inputs for it, inside @given."""
    m = data.draw(onnx_models(max_nodes=5))
    feeds = data.draw(model_inputs(m))
    outs = _session(m).run(None, feeds)
    assert len(outs) == len(m.graph.output) >= 1


def test_shrinks_toward_small_models() -> None:
    from hypothesis import find

    # Smallest model containing a Conv: shrinking should remove everything else.
    m = find(onnx_models(), lambda m: "Conv" in _ops_of(m),
             settings=settings(max_examples=300, database=None, deadline=None, derandomize=True,
                               suppress_health_check=[HealthCheck.too_slow]))
    compute = [n.op_type for n in m.graph.node if n.op_type != "Constant"]
    print("\nshrunk:", compute)
    assert compute == ["Conv"]


@pytest.mark.parametrize("opset", [18])
def test_other_opset(opset: int) -> None:
    for i, m in enumerate(_collect(onnx_models(opset=opset, bias={"ReduceMean": 5.0, "ReduceMax": 5.0}), 40)):
        assert m.opset_import[0].version == opset
        validate(m, seed=i)




@pytest.mark.parametrize("name", list(OPS))
def test_each_registry_entry_alone(name: str) -> None:
    """Every entry can be the only op (ops=[name]) and yields valid models, in all dtypes."""
    # room for the entry's own node count plus a guard node (patterns emit up to ~11 nodes)
    models = _collect(onnx_models(ops=[name], dtypes=ALL_DTYPES, max_nodes=max(6, OPS[name].cost + 3)), 4)
    assert models
    for i, m in enumerate(models):
        validate(m, seed=i)


def test_no_fp16_batch_transpose_into_matmul() -> None:
    """ORT 1.32 segfaults creating a session for float16 Transpose(perm=[1,0,2]) -> MatMul (its
    Transpose+MatMul fusion); the generator must never emit that (a segfault would kill the run)."""
    models = _collect(onnx_models(ops=["Transpose", "MatMul", "transpose-chain", "attention"],
                                  dtypes=("float16",), max_nodes=12), 150)
    for m in models:
        prod = _producer(m)
        for n in m.graph.node:
            if n.op_type != "MatMul":
                continue
            for i in n.input:
                p = prod.get(i)
                if p is not None and p.op_type == "Transpose":
                    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in p.attribute}
                    rank = len(_dims(next(vi for vi in [*m.graph.value_info, *m.graph.output] if vi.name == i)))
                    perm = list(attrs.get("perm", range(rank - 1, -1, -1)))
                    assert perm[:-2] == list(range(len(perm) - 2)), perm
    for i, m in enumerate(models[:30]):
        validate(m, seed=i)
