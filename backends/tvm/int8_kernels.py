"""Tensorized int8 kernels: integer convs and matmuls on the CPU's 8-bit dot-product instructions.

``qdq-to-integer`` turns quant8's QDQ groups into ConvInteger / MatMulInteger. Lowered as a plain
Relax conv/matmul with int32 accumulation, LLVM makes one 32-bit multiply-add per lane: slower
than float on AVX2 (measured 0.75x on a ResNet-18-like model). This module lowers them instead to
kernels built around one hardware instruction group that multiplies 8-bit values and sums groups
of 4 products into int32 lanes:

* x86 AVX2: ``vpmaddubsw`` (u8 x s8, adjacent pairs summed into int16) + ``vpmaddwd`` with ones
  (pairs of int16 into int32): 8 int32 lanes x 4 products per two instructions. The int16 step
  saturates unless |a0*b0 + a1*b1| <= 32767; with u8 activations that holds when every weight is
  in [-64, 64] (255 * 128 = 32640), which is why quant8 uses 7-bit weights (``reduce-range``) on
  x86 by default. Weights outside that range keep the generic path (exact, slower). AVX-512 and
  VNNI hosts run the same AVX2 kernel (a ``vpdpbusd`` kernel is future work: no such CPU here
  to test it on).
* aarch64 with ``+dotprod`` (Cortex-A55/A76, Neoverse-N1 and later): ``sdot`` (s8 x s8, 4 int32
  lanes x 4 products, no saturation: any int8 weight). Cores without dotprod (Cortex-A53/A72)
  keep the generic path.

Each instruction group needs its operands in matching layouts:

* the activation's 4 summed values contiguous: conv inputs are copied once per call to a padded
  NHWC tensor with channels padded to a multiple of 4 (the copy also pads with the zero point and
  shifts u8 <-> s8 by 128 when the instruction wants the other signedness); matmul rows are
  padded to a multiple of 4 the same way;
* the weight as ``[F / lanes, ..., K / 4, lanes, 4]`` blocks: weights are constants, packed here
  with numpy at import time (no run-time cost);
* the accumulator's lanes contiguous: the output tile lives in a ``local`` buffer whose layout
  puts output channels innermost (:class:`Int8Dot` schedule).

Zero points: y = sum (x - zp) * w is computed as sum x' * w - zp' * sum w, with x' the (possibly
shifted) 8-bit value and the padding filled with zp' so padded taps cancel; ``sum w`` per output
channel is a constant.

``LEPTON_TVM_INT8_DOT=0`` turns these kernels off (the generic path is then used everywhere):
for comparisons, and as an escape hatch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Block annotation marking the contraction block of a kernel built here; value: intrinsic name.
ANNOTATION = "lepton.int8_dot"
#: Block annotation with the kernel's layout kind: "conv2d" or "matmul".
KIND = "lepton.int8_kind"
_BLOCK = "lepton_int8_dot"

#: Smallest conv reduction (input channels x kernel taps) that gets the tensorized kernel. Its
#: per-call input copy (NCHW -> padded NHWC) and channel-innermost register tile cost time
#: proportional to the input and output sizes; with few products per output that overhead wins.
#: Measured on this host (AVX2, 2 threads), tensorized vs generic int8 path, ms:
#: 1x1 16->32 @240x320 1.86 vs 0.94; 1x1 12->96 @120x160 1.31 vs 0.74; 1x1 96->24 @120x160
#: 0.87 vs 0.75; 1x1 64->256 @56 1.32 vs 1.14; but 1x1 128->512 @28 0.79 vs 1.37, 1x1 256->256
#: @14 0.14 vs 0.34, 3x3 32->32 @112 1.19 vs 1.87, 3x3 64->64 @56 0.93 vs ~2.
MIN_CONV_REDUCTION = 128


@dataclass(frozen=True)
class DotIntrin:
    """One 8-bit dot-product instruction group, registered as a TVM ``TensorIntrin``."""

    name: str
    lanes: int  # int32 accumulators per group
    act_dtype: str  # dtype the instruction wants for the activation operand
    weight_bound: int  # exact only when every |weight| <= this
    group: int = 4  # 8-bit products summed into each lane


AVX2 = DotIntrin("lepton.avx2_u8s8_8x4", lanes=8, act_dtype="uint8", weight_bound=64)
SDOT = DotIntrin("lepton.neon_sdot_s8s8_4x4", lanes=4, act_dtype="int8", weight_bound=128)


def enabled() -> bool:
    """False when ``LEPTON_TVM_INT8_DOT=0`` (see the module docstring)."""
    return os.environ.get("LEPTON_TVM_INT8_DOT", "1") not in ("0", "false", "no")


def select(target: Any) -> DotIntrin | None:
    """The dot-product intrinsic for ``target`` (a ``tvm.target.Target``), or None."""
    if target is None or not enabled() or target.kind.name != "llvm":
        return None
    from tvm.target.codegen import llvm_cpu_has_features

    triple = str(target.attrs.get("mtriple", ""))
    try:
        if triple.startswith("aarch64"):
            return SDOT if llvm_cpu_has_features("dotprod", target) else None
        if triple.startswith(("x86_64", "i686")) or not triple:
            return AVX2 if llvm_cpu_has_features("avx2", target) else None
    except Exception:  # noqa: BLE001  LLVM cannot answer for this triple: no tensorized kernels
        return None
    return None


_REGISTERED: set[str] = set()


def register(intrin: DotIntrin) -> None:
    """Register ``intrin`` with TVM (once per process)."""
    if intrin.name in _REGISTERED:
        return
    from tvm.s_tir import TensorIntrin

    desc, impl = _avx2_funcs() if intrin is AVX2 else _sdot_funcs()
    try:
        TensorIntrin.register(intrin.name, desc, impl)
    except Exception:  # noqa: BLE001  already registered by an earlier import of this module
        pass
    _REGISTERED.add(intrin.name)


def _desc(lanes: int, a_dtype: str):
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((4,), a_dtype, offset_factor=1),
        B: T.Buffer((lanes, 4), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    return desc


def _avx2_funcs():
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((8, 4), "int8", offset_factor=1),
        C: T.Buffer((8,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:4], B[0:8, 0:4])
            T.writes(C[0:8])
            a4 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            a = T.reinterpret(T.broadcast(a4, 8), dtype="uint8x32")
            b = B.vload([0, 0], dtype="int8x32")
            pairs = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"), a, b, dtype="int16x16")
            C[T.ramp(T.int32(0), 1, 8)] += T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), pairs, T.int16x16(1), dtype="int32x8")

    return _desc(8, "uint8"), impl


def _sdot_funcs():
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "int8", offset_factor=1),
        B: T.Buffer((4, 4), "int8", offset_factor=1),
        C: T.Buffer((4,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:4], A[0:4], B[0:4, 0:4])
            T.writes(C[0:4])
            a4 = T.reinterpret(A.vload([0], "int8x4"), dtype="int32")
            a = T.reinterpret(T.broadcast(a4, 4), dtype="int8x16")
            b = B.vload([0, 0], dtype="int8x16")
            C[T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
                C.vload([0], dtype="int32x4"), a, b, dtype="int32x4")

    return _desc(4, "int8"), impl


# --------------------------------------------------------------------------------------------
# Import side: Relax expressions for ConvInteger / MatMulInteger (called by converters.py)
# --------------------------------------------------------------------------------------------


def _const_value(expr: Any) -> np.ndarray | None:
    import tvm

    return expr.value.numpy() if isinstance(expr, tvm.ir.GenericConst) else None


def _shift(dtype: str, intrin: DotIntrin) -> int:
    """What to add to an activation of ``dtype`` to get the instruction's operand dtype."""
    if dtype == intrin.act_dtype:
        return 0
    return 128 if intrin.act_dtype == "uint8" else -128


def _weights_ok(w: np.ndarray, intrin: DotIntrin) -> bool:
    return w.size > 0 and int(np.abs(w.astype(np.int64)).max()) <= intrin.weight_bound


def _zero_point(bb, zp: Any, shift: int):
    """(constant int | None, run-time Relax int32 scalar | None) for the shifted zero point."""
    from tvm import relax

    if zp is None:
        return shift, None
    value = _const_value(zp)
    if value is not None:
        if value.size != 1:
            return None, None  # per-row zero points: generic path
        return int(value.reshape(())) + shift, None
    if len(zp.ty.shape) != 0 and not (len(zp.ty.shape) == 1 and int(zp.ty.shape[0]) == 1):
        return None, None
    z = relax.op.reshape(relax.op.astype(zp, "int32"), [])
    return None, bb.normalize(relax.op.add(z, relax.const(shift, "int32")) if shift else z)


def conv2d(bb, x: Any, x_zp: Any, w: np.ndarray, *, strides, pads, dilations, intrin: DotIntrin) -> Any | None:
    """ConvInteger (NCHW, group 1, constant weight ``w`` with its zero point already removed) as a
    tensorized kernel; None when this kernel does not apply (the caller uses the generic path)."""
    import tvm
    from tvm import relax, te

    if x.ty.ndim != 4 or w.ndim != 4 or str(x.ty.dtype) not in ("uint8", "int8"):
        return None
    shape = list(getattr(x.ty.shape, "values", None) or [])
    if len(shape) != 4 or not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
        return None  # unknown or symbolic dims: generic path
    n, c, h, wd = (int(d) for d in shape)
    f, cw, kh, kw = w.shape
    if cw != c or f % intrin.lanes or not _weights_ok(w, intrin) or c * kh * kw < MIN_CONV_REDUCTION:
        return None
    shift = _shift(str(x.ty.dtype), intrin)
    zp_const, zp_run = _zero_point(bb, x_zp, shift)
    if zp_const is None and zp_run is None:
        return None
    cp = -(-c // 4) * 4
    lanes = intrin.lanes
    # [F/l, KH, KW, Cp/4, l, 4]
    wpad = np.zeros((f, cp, kh, kw), np.int8)
    wpad[:, :c] = w
    packed = wpad.reshape(f // lanes, lanes, cp // 4, 4, kh, kw).transpose(0, 4, 5, 2, 1, 3).copy()
    (pt, pl), (pb, pr) = pads[:2], pads[2:]
    sh, sw = strides
    dh, dw = dilations
    oh = (h + pt + pb - (kh - 1) * dh - 1) // sh + 1
    ow = (wd + pl + pr - (kw - 1) * dw - 1) // sw + 1
    hp, wp = h + pt + pb, wd + pl + pr
    act = intrin.act_dtype
    register(intrin)

    def kernel(xt, wt, *zp_t):
        pad_value = (zp_t[0]().astype(act) if zp_t else tvm.tirx.const(zp_const, act))

        def staged(i, y, x_, ch):
            inside = tvm.tirx.all(y >= pt, y < pt + h, x_ >= pl, x_ < pl + wd, ch < c)
            # Every index clamped in range: the guard below selects the pad value for the
            # outside taps, and the load stays in bounds even if the select is evaluated eagerly.
            v = xt[i, tvm.tirx.min(ch, c - 1), tvm.tirx.max(tvm.tirx.min(y - pt, h - 1), 0),
                   tvm.tirx.max(tvm.tirx.min(x_ - pl, wd - 1), 0)]
            v = (v.astype("int16") + shift).astype(act) if shift else v
            return tvm.tirx.if_then_else(inside, v, pad_value)

        xs = te.compute((n, hp, wp, cp), staged, name="lepton_int8_stage")
        rh = te.reduce_axis((0, kh), "rh")
        rw = te.reduce_axis((0, kw), "rw")
        rc = te.reduce_axis((0, cp), "rc")
        return te.compute(
            (n, f, oh, ow),
            lambda i, o, y, x_: te.sum(
                xs[i, y * sh + rh * dh, x_ * sw + rw * dw, rc].astype("int32")
                * wt[o // lanes, rh, rw, rc // 4, o % lanes, rc % 4].astype("int32"),
                axis=[rh, rw, rc]),
            name=_BLOCK, attrs={ANNOTATION: intrin.name, KIND: "conv2d"})

    args = [x, relax.const(packed, "int8")] + ([zp_run] if zp_run is not None else [])
    raw = bb.emit_te(kernel, *args, primfunc_name_hint="lepton_int8_conv2d")
    wsum = w.astype(np.int64).sum(axis=(1, 2, 3)).astype(np.int32).reshape(1, f, 1, 1)
    return _subtract_zero_point(raw, zp_const, zp_run, wsum)


def _subtract_zero_point(raw, zp_const, zp_run, wsum: np.ndarray):
    from tvm import relax

    if zp_run is not None:
        return relax.op.subtract(raw, relax.op.multiply(zp_run, relax.const(wsum, "int32")))
    if zp_const:
        return relax.op.subtract(raw, relax.const((wsum.astype(np.int64) * zp_const).astype(np.int32), "int32"))
    return raw


def matmul(bb, a: Any, a_zp: Any, b: np.ndarray, *, intrin: DotIntrin) -> Any | None:
    """MatMulInteger with a constant 2-D ``b`` [K, N] (zero point removed) as a tensorized kernel;
    None when this kernel does not apply."""
    import tvm
    from tvm import relax, te

    if b.ndim != 2 or str(a.ty.dtype) not in ("uint8", "int8") or a.ty.ndim < 1:
        return None
    k, nn = b.shape
    dims = list(getattr(a.ty.shape, "values", None) or [])
    if not dims or not all(isinstance(d, tvm.tirx.IntImm) for d in dims):
        return None  # unknown or symbolic dims (a dynamic batch not pinned): generic path
    lead = dims[:-1]
    if int(dims[-1]) != k or nn % intrin.lanes or not _weights_ok(b, intrin):
        return None
    if not lead:
        return None  # a 1-D activation (vector x matrix): generic path
    shift = _shift(str(a.ty.dtype), intrin)
    zp_const, zp_run = _zero_point(bb, a_zp, shift)
    if zp_const is None and zp_run is None:
        return None
    lanes = intrin.lanes
    kp = -(-k // 4) * 4
    bpad = np.zeros((kp, nn), np.int8)
    bpad[:k] = b
    packed = bpad.reshape(kp // 4, 4, nn // lanes, lanes).transpose(2, 0, 3, 1).copy()  # [N/l, K/4, l, 4]
    act = intrin.act_dtype
    register(intrin)

    lead_shape = [int(d) for d in lead]

    def kernel(at, bt, *zp_t):
        # Leading dims are kept (no reshape to 2-D around the call): a reshape between the kernel
        # and its elementwise epilogue stops Relax's FuseOps, and the epilogue then costs a pass
        # over the int32 result (measured ~0.2 ms per MiniLM FFN matmul).
        pad_value = (zp_t[0]().astype(act) if zp_t else tvm.tirx.const(zp_const, act))

        def staged(*idx):
            *rows, j = idx
            v = at[(*rows, tvm.tirx.min(j, k - 1))]
            v = (v.astype("int16") + shift).astype(act) if shift else v
            return tvm.tirx.if_then_else(j < k, v, pad_value) if kp != k else v

        xs = te.compute((*lead_shape, kp), staged, name="lepton_int8_stage")
        rk = te.reduce_axis((0, kp), "rk")
        return te.compute(
            (*lead_shape, nn),
            lambda *idx: te.sum(xs[(*idx[:-1], rk)].astype("int32")
                                * bt[idx[-1] // lanes, rk // 4, idx[-1] % lanes, rk % 4].astype("int32"), axis=rk),
            name=_BLOCK, attrs={ANNOTATION: intrin.name, KIND: "matmul"})

    args = [a, relax.const(packed, "int8")] + ([zp_run] if zp_run is not None else [])
    raw = bb.emit_te(kernel, *args, primfunc_name_hint="lepton_int8_matmul")
    wsum = b.astype(np.int64).sum(axis=0).astype(np.int32).reshape([1] * max(len(lead), 1) + [nn])
    return _subtract_zero_point(raw, zp_const, zp_run, wsum)


# --------------------------------------------------------------------------------------------
# Schedule side
# --------------------------------------------------------------------------------------------


def _acc_budget(intrin: DotIntrin) -> int:
    # AVX2 has 16 vector registers (the tile's accumulators + the weight vectors + 1 broadcast
    # activation must fit); NEON has 32.
    return 12 if intrin is AVX2 else 24


def _tile(rows: list[int], blocks: int, intrin: DotIntrin) -> tuple[list[int], int]:
    """Register tile: a factor of each row-like extent (their product = pixels or matrix rows)
    and ``nj`` lane-blocks of output channels, as many accumulators as the registers allow.
    Each loaded weight vector is reused for every row of the tile, each broadcast activation for
    every lane-block."""
    budget = _acc_budget(intrin)
    regs = 16 if intrin is AVX2 else 32
    best = None
    from itertools import product

    divs = [[d for d in range(1, min(e, budget) + 1) if e % d == 0] for e in rows]
    for nj in (d for d in range(1, min(blocks, budget) + 1) if blocks % d == 0):
        for fs in product(*divs):
            mi = int(np.prod(fs)) if fs else 1
            acc = mi * nj
            if acc > budget or acc + nj + 1 > regs:
                continue
            # Most accumulators; then the longer innermost row factor (the vectorised epilogue
            # runs along it), then nj. (Preferring square-ish tiles - fewer loads per step - was
            # measured no faster on the ResNet-18 convs.)
            key = (acc, fs[-1] if fs else 0, nj)
            if best is None or key > best[0]:
                best = (key, list(fs), nj)
    assert best is not None  # (1, ..., 1), nj=1 always fits
    return best[1], best[2]


def _find_block(sch):
    try:
        root = sch.get_sblock("root")
    except Exception:  # noqa: BLE001  extern/opaque PrimFuncs (e.g. TopK) have no root block
        return None
    for b in sch.get_child_blocks(root):
        ann = sch.get(b).annotations
        if ANNOTATION in ann:
            return b, str(ann[ANNOTATION]), str(ann[KIND])
    return None


def schedule(sch, lanes32: int):
    """Schedule the kernel in ``sch`` (a PrimFunc made by :func:`conv2d` / :func:`matmul`, with its
    fused elementwise epilogue). Returns ``sch``, or None when the PrimFunc has no such kernel."""
    from .cpu_schedule import _collapse_epilogue, _extent, _schedule_leftover_blocks

    found = _find_block(sch)
    if found is None:
        return None
    blk, name_intrin, kind = found
    intrin = {AVX2.name: AVX2, SDOT.name: SDOT}[name_intrin]
    register(intrin)
    name = sch.get(blk).name_hint
    epilogue = _collapse_epilogue(sch, name)
    if epilogue is False:
        return None
    blk = sch.get_sblock(name)
    loops = sch.get_loops(blk)
    lanes = intrin.lanes
    if kind == "conv2d":
        n, f, y, x, rh, rw, rc = loops
        fo, fi = sch.split(f, [None, lanes])
        (my, mx), nj = _tile([_extent(sch, y), _extent(sch, x)], _extent(sch, fo), intrin)
        yo, yi = sch.split(y, [None, my])
        xo, xi = sch.split(x, [None, mx])
        foo, foi = sch.split(fo, [None, nj])
        co, ci = sch.split(rc, [None, 4])
        sch.reorder(n, foo, yo, xo, rh, rw, co, yi, xi, foi, fi, ci)
        outer, first_red, unrolled, lane_loop = [n, foo, yo, xo], rh, [yi, xi, foi], fi
    else:
        *rows, j, rk = loops
        jo, ji = sch.split(j, [None, lanes])
        factors, nj = _tile([_extent(sch, r) for r in rows], _extent(sch, jo), intrin)
        # Each row dim is tiled on its own (fusing them first makes the block bindings
        # non-affine and tensorize refuses to blockize).
        row_outer, row_inner = [], []
        for r, fct in zip(rows, factors):
            o, i = sch.split(r, [None, fct])
            row_outer.append(o)
            row_inner.append(i)
        joo, joi = sch.split(jo, [None, nj])
        ko, ki = sch.split(rk, [None, 4])
        sch.reorder(*row_outer, joo, ko, *row_inner, joi, ji, ki)
        outer, first_red, unrolled, lane_loop = [*row_outer, joo], ko, [*row_inner, joi], ji
    fused = sch.fuse(*outer)
    sch.parallel(fused)
    acc = sch.cache_write(blk, 0, "local")
    if kind == "conv2d":  # accumulator lanes = output channels must be contiguous
        sch.transform_layout(blk, ("write", 0), lambda a, b, c, d: (a, c, d, b))
    sch.reverse_compute_at(acc, fused, preserve_unit_loops=True)
    if epilogue is not None:
        try:
            sch.reverse_compute_inline(epilogue)
        except Exception:  # noqa: BLE001  stays a separate (leftover-scheduled) block
            pass
    wb = sch.get_loops(acc)[1:]
    if kind == "matmul" and wb and _extent(sch, wb[-1]) == nj * lanes:
        sch.vectorize(wb[-1])
    elif kind == "conv2d" and wb and (_extent(sch, wb[-1]) or 0) >= 4:
        # NCHW output, channel-innermost accumulator: vectorise the epilogue along the output
        # row (strided reads from the register tile, contiguous stores). Measured on the
        # ResNet-18 convs: faster than the scalar epilogue it replaces.
        sch.vectorize(wb[-1])
    init = sch.decompose_reduction(blk, first_red)
    init_loops = sch.get_loops(init)
    if init_loops and _extent(sch, init_loops[-1]) == lanes:
        sch.vectorize(init_loops[-1])
    sch.tensorize(lane_loop, intrin.name)
    for lp in unrolled:
        if (_extent(sch, lp) or 0) > 1:
            sch.unroll(lp)
    _schedule_leftover_blocks(sch, name, lanes32)
    return sch
