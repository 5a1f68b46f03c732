"""Search-free CPU schedules for TVM 0.27 (Relax era).

TVM 0.27 ships no untuned CPU schedule for convolutions or matrix multiplies: the default CPU
pipeline leaves every PrimFunc as the naive single-threaded loop nest produced by LegalizeOps,
and ``tvm.s_tir.dlight.cpu`` only has ``GEMV`` and ``Reduction`` (softmax / norms) rules.
This module adds three dlight ``ScheduleRule``s that close most of that gap without any search:

* :class:`DepthwiseConv` -- for depthwise convolutions (``group == channels``): parallel over
  channels, each channel's input padded right before use, ``rows x vector`` register tiles with
  the kernel window unrolled, fused epilogue (see the class docstring).
* :class:`TiledReduction` -- for PrimFuncs with one "contraction" block (conv2d, matmul,
  pooling, mean): register-blocked direct loop nest. The output's innermost axis is split into
  SIMD-width chunks and vectorised, a second output axis that the vector-loaded operand does not
  depend on (conv output channels, matmul rows) is unrolled so each loaded vector is reused from
  registers, the accumulator tile lives in a ``local`` buffer, the outer tile loops are fused and
  parallelised over TVM's thread pool, and the fused elementwise epilogue (bias, BN, ReLU,
  residual add) is computed straight from the accumulator. Strided inputs (stride-2 convs) are
  first stored phase-split (``w -> (w % s, w // s)``) so the vector loads stay contiguous.
* :class:`ParallelVectorize` -- for everything else (pads, elementwise, transposes): outer loops
  fused and parallelised, innermost loop vectorised when its extent allows.

All rules give up (return ``None``) on anything they do not recognise, so the next rule (or no
schedule at all, which is still correct) applies. Every schedule primitive is checked by TVM, so a
rule can only make code faster or fail -- never wrong.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

# Accumulator registers a micro-kernel may use: x86 AVX2 and NEON both have 16 vector registers;
# leave a few for the broadcast weight and the loaded input vector.
_MAX_ACC_REGS = 12


def vector_lanes(target: Target, dtype_bits: int = 32) -> int:
    """SIMD lanes for ``dtype_bits``-wide elements on ``target``.

    Asks LLVM which vector ISA the target's CPU has (AVX-512 -> 512 bits, AVX/AVX2 -> 256, else
    128 bits as SSE and NEON). ``llvm_get_vector_width`` is not used: in TVM 0.27 it answers 512
    for AVX2-only CPUs such as haswell.
    """
    from tvm.target.codegen import llvm_cpu_has_features

    bits = 128
    try:
        if llvm_cpu_has_features("avx512f", target):
            bits = 512
        elif llvm_cpu_has_features("avx", target):
            bits = 256
    except Exception:  # non-x86 triples or no LLVM: 128-bit SIMD (NEON/SSE)
        bits = 128
    return max(1, bits // dtype_bits)


def _extent(sch: s_tir.Schedule, loop) -> int | None:
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


def _is_reduction(sch: s_tir.Schedule, block) -> bool:
    return any(iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)


def _vars_in(expr) -> set:
    return set(tirx.analysis.undefined_vars(expr))


def _last_dim(region) -> int:
    """Index of the innermost dim of a buffer region's buffer whose extent is not 1.

    Trailing unit dims do not change addresses: in magika's 1-D conv written as a 5x1 Conv
    (``[1, 256, 512, 1]``), consecutive rows are consecutive floats, so the row axis is the one
    that walks memory contiguously.
    """
    shape = region.source.shape
    i = len(shape) - 1
    while i > 0 and isinstance(shape[i], tirx.IntImm) and int(shape[i]) == 1:
        i -= 1
    return i


def _unit_stride(reads, var) -> bool:
    """True when every read indexed by ``var`` walks its innermost dim with a small constant stride.

    Measured: vectorising a stride-2 conv along output width (LLVM emits shuffles) is still ~25x
    faster than scalar; vectorising along an axis that only indexes an outer dim (a gather with
    a stride of a whole row or more) is not worth it.
    """
    from tvm.sym.pattern import detect_linear_equation

    for r in reads:
        if not r.region:
            continue
        last = r.region[_last_dim(r)].min
        if var not in _vars_in(last):
            if any(var in _vars_in(rg.min) for rg in r.region):
                # var only indexes an outer dim: the vector walks memory with a large stride
                return False
            continue
        coef = detect_linear_equation(last, [var])
        if len(coef) != 2 or not isinstance(coef[0], tirx.IntImm) or not 0 <= int(coef[0]) <= 4:
            return False
    return True


def _destride_inputs(sch: s_tir.Schedule, red, reads, var) -> bool:
    """Give strided inputs a phase-split layout so the vector axis reads them contiguously.

    A stride-s conv reads ``in[..., s*x + r]`` along the vectorised output column ``x``: a gather.
    Storing the (padded) input as ``in'[..., w % s, w // s]`` turns that into
    ``in'[..., r % s, x + r // s]``, a plain vector load. The padding block (or, for unpadded
    inputs, a copy made with ``cache_read``) writes the new layout; measured on the ResNet-18
    stride-2 convs this is several times faster than the gather. Returns True if changed.
    """
    from tvm.sym.pattern import detect_linear_equation

    changed = False
    for idx, r in enumerate(list(reads)):
        if not r.region:
            continue
        last = r.region[-1].min
        if var not in _vars_in(last):
            continue
        coef = detect_linear_equation(last, [var])
        if len(coef) != 2 or not isinstance(coef[0], tirx.IntImm):
            continue
        stride = int(coef[0])
        if stride not in (2, 3, 4):
            continue
        buf = r.source
        width = buf.shape[-1]
        if not isinstance(width, tirx.IntImm) or int(width) % stride:
            continue
        block_name = sch.get(red).name_hint
        producers = [p for p in sch.get_producers(red) if any(w.source.same_as(buf) for w in sch.get(p).writes)]
        if producers:
            target_block = producers[0]
        else:
            target_block = sch.cache_read(red, idx, "global")
        sch.transform_layout(target_block, ("write", 0), _phase_split(len(buf.shape), stride))
        red = sch.get_sblock(block_name)
        changed = True
        break  # one operand is vectorised along the axis; the others are broadcast
    return changed


def _channels_last_weights(sch: s_tir.Schedule, red, reads, realize_vars, s_ext, n_s: int, n_r: int,
                           lanes: int) -> int | None:
    """Vectorise a conv over output channels: a copy of its weights with that axis innermost.

    For an NCHW conv whose rows do not split into full vectors -- magika's 1-D conv over 508
    output rows (508 = 4 x 127, so at most 4-lane vectors along the row) -- the output channels
    (a multiple of the SIMD width) are the better vector axis, but the OIHW weights walk them with
    a stride of a whole filter. A ``cache_read`` copy stored as ``[i, kh, kw, o]`` makes them a
    contiguous vector load; the rows become the reuse axis (each input value is broadcast once
    per tile). The copy is made per call (the weights are a parameter of the PrimFunc):
    ``o*i*kh*kw`` floats, a small cost next to the ``2*o*i*kh*kw*rows`` FLOPs it speeds up.
    Returns the output-channel axis, or None when the conv does not fit (nothing changed).
    """
    if n_s != 4 or n_r != 3 or s_ext[1] % lanes or s_ext[2] * s_ext[3] < 128:
        return None  # few output pixels: the per-call copy would cost more than it saves
    oc_var = realize_vars[1]
    for idx, r in enumerate(reads):
        if len(r.region) != 4 or len(r.source.shape) != 4:
            continue
        mins = [rg.min for rg in r.region]
        # OIHW weights: dim 0 is the output channel itself, nothing else depends on it
        if not (isinstance(mins[0], tirx.Var) and mins[0].same_as(oc_var)):
            continue
        if any(oc_var in _vars_in(m) for m in mins[1:]):
            return None
        copy = sch.cache_read(red, idx, "global")
        sch.transform_layout(copy, ("write", 0), tirx.IndexMap.from_func(lambda o, i, h, w: (i, h, w, o), ndim=4))
        # write the copy contiguously: its output-channel loop innermost (a strided gather read)
        loops = sch.get_loops(copy)
        if len(loops) == 4:
            sch.reorder(loops[1], loops[2], loops[3], loops[0])
        return 1
    return None


def _phase_split(ndim: int, stride: int) -> "tirx.IndexMap":
    """IndexMap (..., w) -> (..., w % stride, w // stride)."""

    def f(*i):
        return (*i[:-1], i[-1] % stride, i[-1] // stride)

    return tirx.IndexMap.from_func(f, ndim=ndim)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _pick_vector_factor(extent: int, lanes: int) -> int:
    """Largest multiple of ``lanes`` dividing ``extent`` up to 2 vectors; else largest divisor <= 1 vector.

    Partial vectors wider than one register are avoided: LLVM splits e.g. ``<14 x float>`` into
    8 + 4 + 2 pieces, and measured on MobileNetV2's 14x14 and 28x28 pointwise convs (AVX2) a
    14-wide vector ran 13-16x slower than a 7-wide one.
    """
    divs = _divisors(extent)
    full = [d for d in divs if d % lanes == 0 and d <= 2 * lanes]
    return max(full) if full else max(d for d in divs if d <= lanes)


def _schedule_leftover_blocks(sch: s_tir.Schedule, red_name: str, lanes: int) -> None:
    """Parallelise + vectorise every root block other than the reduction ``red_name`` (and its
    init/local copies) that is not parallel yet: pads, epilogues that would not inline."""
    red_like = {red_name, red_name + "_init", red_name + "_local"}
    for b in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(b).name_hint in red_like:
            continue
        loops = sch.get_loops(b)
        if loops and sch.get(loops[0]).kind == tirx.ForKind.PARALLEL:
            continue
        try:
            _parallel_vectorize_block(sch, b, lanes, 64)
        except Exception:  # a block that cannot be split this way stays serial (correct, slower)
            pass


class ParallelVectorize(ScheduleRule):
    """Fuse + parallelise outer spatial loops and vectorise the innermost one, for every block."""

    def __init__(self, min_parallel_extent: int = 64) -> None:
        self.min_parallel_extent = min_parallel_extent

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        try:
            sch = s_tir.Schedule(func)
            root = sch.get_sblock("root")
            blocks = sch.get_child_blocks(root)
            if not blocks:
                return None
            lanes = vector_lanes(target)
            if not any(_is_reduction(sch, b) for b in blocks):
                _inline_elementwise(sch, set())
                blocks = sch.get_child_blocks(root)
            for block in blocks:
                _parallel_vectorize_block(sch, block, lanes, self.min_parallel_extent)
            return sch
        except Exception:  # any schedule error: leave this PrimFunc unscheduled (correct, slower)
            return None


def _parallel_vectorize_block(sch: s_tir.Schedule, block, lanes: int, min_parallel: int) -> None:
    """Best effort: parallel over leading spatial loops, vectorise the innermost spatial loop."""
    loops = sch.get_loops(block)
    if not loops:
        return
    iters = sch.get(block).iter_vars
    # Only handle the plain "one loop per block iterator" nests that LegalizeOps emits.
    if len(loops) != len(iters):
        return
    kinds = [iv.iter_type for iv in iters]
    n_spatial = 0
    for k in kinds:
        if k != tirx.IterVar.DataPar:
            break
        n_spatial += 1
    if n_spatial == 0:
        return
    spatial = list(loops[:n_spatial])
    exts = [_extent(sch, lp) for lp in spatial]
    if any(e is None for e in exts):
        return
    vec_loop = None
    if n_spatial == len(loops) and exts[-1] >= lanes:  # pure elementwise: vectorise innermost axis
        f = _pick_vector_factor(exts[-1], lanes)
        if f >= max(2, lanes // 2):
            if f == exts[-1]:
                vec_loop = spatial[-1]
                spatial = spatial[:-1]
            else:
                outer, vec_loop = sch.split(spatial[-1], factors=[None, f])
                spatial[-1] = outer
    # Parallelise enough leading spatial loops to give every thread work.
    if spatial:
        take, total = 0, 1
        for e in (_extent(sch, lp) for lp in spatial):
            take += 1
            total *= e
            if total >= min_parallel:
                break
        fused = sch.fuse(*spatial[:take]) if take > 1 else spatial[0]
        if total > 1:
            sch.parallel(fused)
    if vec_loop is not None:
        sch.vectorize(vec_loop)


class TiledReduction(ScheduleRule):
    """Register-blocked, vectorised, parallel schedule for conv2d / matmul / pooling PrimFuncs."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        try:
            return self._apply(func, target)
        except Exception:  # a primitive refused (unusual access pattern): let the next rule try
            return None

    def _apply(self, func: tirx.PrimFunc, target: Target) -> s_tir.Schedule | None:
        sch = s_tir.Schedule(func)
        root = sch.get_sblock("root")
        blocks = sch.get_child_blocks(root)
        reds = [b for b in blocks if _is_reduction(sch, b)]
        if len(reds) != 1:
            return None  # softmax/norm-like chains are dlight.cpu.Reduction's job
        red = reds[0]
        red_name = sch.get(red).name_hint

        # 1. Collapse the elementwise epilogue chain (bias, BN, ReLU, residual add) into the last
        #    block, so only one epilogue block consumes the reduction.
        _inline_elementwise(sch, {red_name})
        epilogue = _collapse_epilogue(sch, red_name)
        if epilogue is False:
            return None
        red = sch.get_sblock(red_name)

        loops = sch.get_loops(red)
        ivs = sch.get(red).iter_vars
        if len(loops) != len(ivs):
            return None
        kinds = [iv.iter_type for iv in ivs]
        n_s = sum(1 for k in kinds if k == tirx.IterVar.DataPar)
        if kinds[:n_s] != [tirx.IterVar.DataPar] * n_s or n_s == 0:
            return None  # reduction loops must come after the spatial ones
        exts = [_extent(sch, lp) for lp in loops]
        if any(e is None for e in exts):
            return None  # dynamic shapes: not handled here
        s_loops, r_loops = list(loops[:n_s]), list(loops[n_s:])
        s_ext = exts[:n_s]

        # Block iter var of each spatial loop (LegalizeOps binds them 1:1 in order).
        realize_vars = [iv.var for iv in ivs]
        reads = sch.get(red).reads
        if s_ext[n_s - 1] >= 2 and _destride_inputs(sch, red, reads, realize_vars[n_s - 1]):
            red = sch.get_sblock(red_name)
            reads = sch.get(red).reads

        lanes = vector_lanes(target)
        v = n_s - 1
        while v > 0 and s_ext[v] == 1:
            v -= 1  # trailing unit axes (a kx1 conv's output width): vectorise the axis before
        vi = 1
        if s_ext[v] >= 2 and _unit_stride(reads, realize_vars[v]):
            vi = _pick_vector_factor(s_ext[v], lanes)
        if 2 * vi <= lanes and s_ext[v] >= 128:
            oc = _channels_last_weights(sch, red, reads, realize_vars, s_ext, n_s, len(r_loops), lanes)
            if oc is not None:
                red = sch.get_sblock(red_name)
                reads = sch.get(red).reads
                v, vi = oc, _pick_vector_factor(s_ext[oc], lanes)
        # The reuse axis: an output axis with no effect on the operands that vary along v. Each
        # value loaded along v is then used ut times from registers.
        u = None
        if vi > 1:
            v_var = realize_vars[v]
            v_dep = [r for r in reads if any(v_var in _vars_in(rg.min) for rg in r.region)]
            used = set()
            for r in v_dep:
                for rg in r.region:
                    used |= _vars_in(rg.min)
            cands = [i for i in range(n_s) if i != v and s_ext[i] > 1 and realize_vars[i] not in used]
            if cands:
                u = max(cands, key=lambda i: s_ext[i])
        vec_regs = -(-vi // lanes)
        ut = 1
        if u is not None:
            ut = max(d for d in _divisors(s_ext[u]) if d * vec_regs <= _MAX_ACC_REGS)

        # 2. Tile: [outer spatial..., u_o, v_o] | reductions | [u_i, v_i].
        outer: list = []
        inner: list = []
        for i, lp in enumerate(s_loops):
            if i == v and vi > 1:
                o, n = sch.split(lp, factors=[None, vi])
                outer.append(o)
                v_inner = n
            elif i == u and ut > 1:
                o, n = sch.split(lp, factors=[None, ut])
                outer.append(o)
                u_inner = n
            else:
                outer.append(lp)
        if u is not None and ut > 1:
            inner.append(u_inner)
        if vi > 1:
            inner.append(v_inner)
        sch.reorder(*outer, *r_loops, *inner)
        # One parallel loop over all output tiles: TVM's thread pool splits it statically.
        fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        if s_ext and _extent(sch, fused) and _extent(sch, fused) > 1:
            sch.parallel(fused)

        # 3. Accumulate the tile in a local buffer (registers after LLVM's SROA), write it once.
        if inner and r_loops:
            acc = sch.cache_write(red, 0, "local")
            if v != n_s - 1:
                # the vector axis is not the output's innermost (output channels, see
                # _channels_last_weights): make it the accumulator's, so each register is one row
                nd = n_s
                sch.transform_layout(red, ("write", 0), tirx.IndexMap.from_func(
                    lambda *i: (*i[:v], *i[v + 1:], i[v]), ndim=nd))
            sch.reverse_compute_at(acc, fused, preserve_unit_loops=True)
            if epilogue is not None:
                try:
                    sch.reverse_compute_inline(epilogue)
                    epilogue = None
                except Exception:
                    pass
            wb_loops = sch.get_loops(acc)[1:]
            if wb_loops:
                if vi > 1 and _extent(sch, wb_loops[-1]) == vi:
                    sch.vectorize(wb_loops[-1])
            # Vectorise before splitting off the init: once split, the update block is neither
            # "complete" nor "reduction" and TVM refuses to vectorise it.
            if u is not None and ut > 1:
                sch.unroll(u_inner)
            if vi > 1:
                sch.vectorize(v_inner)
            init = sch.decompose_reduction(red, r_loops[0])
            init_loops = sch.get_loops(init)[1:]
            if init_loops and vi > 1 and sch.get(init_loops[-1]).kind != tirx.ForKind.VECTORIZED:
                sch.vectorize(init_loops[-1])
        elif vi > 1:
            sch.vectorize(v_inner)

        # 4. An elementwise prologue the reduction reads once per element (magika's GELU before its
        #    max-pool): computed tile by tile inside the same parallel loop, no second barrier.
        if fused is not None and sch.get(fused).kind == tirx.ForKind.PARALLEL:
            _prologue_at(sch, red_name, fused, lanes)
        # 5. Anything left (pads, an epilogue that would not inline): parallel + vectorise.
        _schedule_leftover_blocks(sch, red_name, lanes)
        return sch


def _prologue_at(sch: s_tir.Schedule, red_name: str, loop, lanes: int) -> None:
    """``compute_at`` the spatial producers that ``red_name`` reads once per element under ``loop``,
    vectorising their innermost loop (any factor of 2 lanes or more: 4 of 508 rows still beats
    scalar). Producers read more than once (a conv's padded input) are left alone."""
    names = {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))}
    red = sch.get_sblock(red_name if red_name in names else red_name + "_update")  # after decompose
    dom = 1
    for iv in sch.get(red).iter_vars:
        if not isinstance(iv.dom.extent, tirx.IntImm):
            return
        dom *= int(iv.dom.extent)
    for p in sch.get_producers(red):
        if _is_reduction(sch, p) or len(sch.get(p).writes) != 1:
            continue
        if _buffer_size(sch.get(p).writes[0].source) != dom:
            continue
        try:
            sch.compute_at(p, loop, preserve_unit_loops=True)
        except Exception:  # the tile's region of p is not a clean box: stays a separate pass
            continue
        ploops = sch.get_loops(p)[1:]
        if not ploops:
            continue
        ext = _extent(sch, ploops[-1])
        if ext and ext >= 2:
            f = _pick_vector_factor(ext, lanes)
            if f >= 2:
                try:
                    sch.vectorize(ploops[-1] if f == ext else sch.split(ploops[-1], factors=[None, f])[1])
                except Exception:  # not vectorisable (opaque call): stays scalar
                    pass


class DepthwiseConv(ScheduleRule):
    """Row x column register tiles for depthwise (``group == channels``) NCHW convolutions.

    :class:`TiledReduction` finds no reuse axis here (every output channel reads its own input
    channel), so it falls back to 1 x ``lanes`` tiles with a serial 3x3 reduction loop around a
    single vector FMA, and pads the whole input in a separate pass. This rule instead:

    * parallelises over (batch, channel), the only axis with independent work and plenty of it;
    * pads (phase-split for strides 2-4, see :func:`_destride_inputs`) one channel plane at a
      time inside that loop, so the padded plane is still in L1/L2 when the conv reads it;
    * computes ``rows x vector`` output tiles (``rows * vectors <= _MAX_ACC_REGS``) with the
      kernel window fully unrolled: each weight is broadcast once per tile and the input row
      vectors that neighbouring output rows share are loaded once (LLVM merges the loads);
    * computes the fused epilogue (BN, clip/ReLU6) from the accumulators before storing.
    """

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        try:
            return self._apply(func, target)
        except Exception:  # a primitive refused: TiledReduction (or no schedule) applies instead
            return None

    def _apply(self, func: tirx.PrimFunc, target: Target) -> s_tir.Schedule | None:
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        reds = [b for b in blocks if _is_reduction(sch, b)]
        if len(reds) != 1:
            return None
        red = reds[0]
        red_name = sch.get(red).name_hint
        ivs = sch.get(red).iter_vars
        loops = sch.get_loops(red)
        kinds = [iv.iter_type for iv in ivs]
        if len(loops) != 7 or len(ivs) != 7:
            return None
        if kinds != [tirx.IterVar.DataPar] * 4 + [tirx.IterVar.CommReduce] * 3:
            return None
        exts = [_extent(sch, lp) for lp in loops]
        if any(e is None for e in exts) or exts[4] != 1:
            return None  # dynamic, or reduces over input channels (a dense/grouped conv)
        _, c_var, y_var, x_var, _, ry_var, _ = (iv.var for iv in ivs)
        reads = sch.get(red).reads
        # The data operand: 4-D, its channel index follows the output channel, rows follow ry.
        data = [r for r in reads if len(r.region) == 4 and c_var in _vars_in(r.region[1].min)
                and ry_var in _vars_in(r.region[2].min) and y_var in _vars_in(r.region[2].min)]
        if len(data) != 1:
            return None
        data_buf = data[0].source
        producers = [p for p in sch.get_producers(red)
                     if any(w.source.same_as(data_buf) for w in sch.get(p).writes)]

        epilogue = _collapse_epilogue(sch, red_name)
        if epilogue is False:
            return None
        red = sch.get_sblock(red_name)

        if exts[3] >= 2 and _destride_inputs(sch, red, reads, x_var):
            red = sch.get_sblock(red_name)
            reads = sch.get(red).reads
            producers = [p for p in sch.get_producers(red)
                         if any(w.source.same_as(r.source) for w in sch.get(p).writes for r in reads)]
        lanes = vector_lanes(target)
        vi = 1
        if _unit_stride(reads, x_var):
            vi = _pick_vector_factor(exts[3], lanes)
        vec_regs = -(-vi // lanes)
        yt = max(d for d in _divisors(exts[2]) if d * vec_regs <= _MAX_ACC_REGS and d <= 4)

        n, c, y, x, rc, ry, rx = sch.get_loops(red)
        yo, yi = sch.split(y, factors=[None, yt])
        xo, xi = sch.split(x, factors=[None, vi])
        sch.reorder(n, c, yo, xo, rc, ry, rx, yi, xi)
        nc = sch.fuse(n, c)
        sch.parallel(nc)
        acc = sch.cache_write(red, 0, "local")
        sch.reverse_compute_at(acc, xo, preserve_unit_loops=True)
        if epilogue is not None:
            try:
                sch.reverse_compute_inline(epilogue)
            except Exception:  # stays a separate pass; step 4 parallelises it
                pass
        wb = sch.get_loops(acc)
        if vi > 1 and _extent(sch, wb[-1]) == vi:
            sch.vectorize(wb[-1])
        sch.unroll(ry)
        sch.unroll(rx)
        sch.unroll(yi)
        if vi > 1:
            sch.vectorize(xi)
        init = sch.decompose_reduction(red, rc)
        init_loops = sch.get_loops(init)
        if vi > 1 and sch.get(init_loops[-1]).kind != tirx.ForKind.VECTORIZED:
            sch.vectorize(init_loops[-1])

        # Pad one channel plane per parallel iteration, right before the conv reads it.
        for p in producers:
            if sch.get(p).name_hint == red_name or _is_reduction(sch, p):
                continue
            try:
                sch.compute_at(p, nc, preserve_unit_loops=True)
            except Exception:  # e.g. the pad reads across channels: stays a separate pass
                continue
            ploops = sch.get_loops(p)[1:]
            if ploops:
                ext = _extent(sch, ploops[-1])
                if ext and ext >= lanes:
                    f = _pick_vector_factor(ext, lanes)
                    if f >= max(2, lanes // 2):
                        if f == ext:
                            sch.vectorize(ploops[-1])
                        else:
                            sch.vectorize(sch.split(ploops[-1], factors=[None, f])[1])

        _schedule_leftover_blocks(sch, red_name, lanes)
        return sch


def _domain(sch: s_tir.Schedule, block) -> int | None:
    """Iterations of ``block``'s loop nest (None when an extent is not static)."""
    n = 1
    for lp in sch.get_loops(block):
        e = _extent(sch, lp)
        if e is None:
            return None
        n *= e
    return n


def _buffer_size(buf) -> int | None:
    n = 1
    for d in buf.shape:
        if not isinstance(d, tirx.IntImm):
            return None
        n *= int(d)
    return n


def _inline_elementwise(sch: s_tir.Schedule, keep: set[str]) -> None:
    """Inline every spatial block into its (spatial) consumers, except the blocks in ``keep``.

    FuseTIR leaves one loop nest per fused op: magika's GELU-like tail before its max-pool was
    eleven passes over a 1 MB tensor, each its own parallel region. Every parallel region is a
    thread-pool barrier, and on a loaded 2-core machine a barrier waits for a time slice (measured:
    several ms each), so one loop nest instead of eleven is both less memory traffic and fewer
    waits. A block is only inlined when no consumer iterates more often than it has elements (no
    broadcast), so nothing is recomputed; blocks read by a reduction stay materialised (a conv's
    padded input is read once per kernel tap).
    """
    changed = True
    while changed:
        changed = False
        for b in sch.get_child_blocks(sch.get_sblock("root")):
            name = sch.get(b).name_hint
            if name in keep or _is_reduction(sch, b):
                continue
            consumers = sch.get_consumers(b)
            if not consumers or any(_is_reduction(sch, c) for c in consumers):
                continue
            writes = sch.get(b).writes
            if len(writes) != 1:
                continue
            size = _buffer_size(writes[0].source)
            doms = [_domain(sch, c) for c in consumers]
            if size is None or any(d is None or d > size for d in doms):
                continue
            try:
                sch.compute_inline(b)
            except Exception:  # not inlinable (reads with offsets, opaque): stays separate
                continue
            changed = True
            break


def _collapse_epilogue(sch: s_tir.Schedule, red_name: str):
    """Inline the elementwise chain after the reduction block into its last block.

    Returns the single consumer block left (the epilogue), None if the reduction writes the
    output directly, or False when more than one consumer remains (not a simple epilogue).
    """
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    names = [sch.get(b).name_hint for b in blocks]
    for name in names[names.index(red_name) + 1 :]:
        blk = sch.get_sblock(name)
        if not sch.get_consumers(blk):  # writes a function output: the surviving epilogue
            continue
        try:
            sch.compute_inline(blk)
        except Exception:  # not inlinable (e.g. read twice with offsets): stays separate
            pass
    consumers = sch.get_consumers(sch.get_sblock(red_name))
    if len(consumers) > 1:
        return False
    return consumers[0] if consumers else None


class Int8Dot(ScheduleRule):
    """The tensorized int8 conv/matmul kernels of :mod:`.int8_kernels` (recognised by their block
    annotation; every other PrimFunc is declined)."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        from . import int8_kernels

        # None for PrimFuncs without the kernel's block. A schedule error is a bug in the
        # kernel/schedule pair, not "does not apply": it is raised so that tests see it instead
        # of getting a silently slow generic schedule.
        return int8_kernels.schedule(s_tir.Schedule(func), vector_lanes(target))


def default_cpu_rules() -> list[ScheduleRule]:
    """The rule list used for untuned CPU builds, most specific first."""
    from tvm.s_tir import dlight as dl

    # No dlight.cpu.GEMV: it vectorises 64/128 output rows around the whole reduction and marks the
    # reduction for explicit unrolling (up to 256 steps); when the reduction does not split evenly
    # (a predicate per step) LLVM gets ~16k scalarised, guarded statements and takes minutes --
    # ppocr-det's 96->384 squeeze-excite 1x1 conv (1x1 spatial) alone ran > 120 s in codegen, so the
    # model never finished compiling. In the corpus GEMV only claimed such squeeze-excite convs,
    # which TiledReduction compiles in ~0.1 s (parallel over output channels; they are tiny).
    # TiledReduction before dlight.cpu.Reduction, which also claims conv/pool + epilogue PrimFuncs
    # but only parallelises the batch axis (1 at inference), i.e. runs them single-threaded and
    # unvectorised.
    return [Int8Dot(), DepthwiseConv(), TiledReduction(), dl.cpu.Reduction(), ParallelVectorize()]


class Guarded(ScheduleRule):
    """A dlight rule whose schedule errors mean "does not apply": the next rule gets the kernel.

    dlight's GPU rules raise instead of declining on some kernels they match (ddddocr-old's
    int32-accumulating integer convs made dl.gpu.Matmul fail with "The block no longer exists in
    the IRModule"), which took the whole CUDA build down although Fallback schedules them fine.
    """

    def __init__(self, rule: ScheduleRule) -> None:
        self.rule = rule

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool):
        try:
            return self.rule.apply(func, target, tunable)
        except Exception:  # noqa: BLE001  a failed rule declines; see the class docstring
            return None

    def is_target_available(self, target: Target) -> bool:
        return self.rule.is_target_available(target)


def default_gpu_rules() -> list[ScheduleRule]:
    """dlight's default GPU rules (what TVM's CUDA pipeline applies), for untuned CUDA builds;
    all but the last are :class:`Guarded` (Fallback's errors stay errors: nothing follows it)."""
    from tvm.s_tir import dlight as dl

    return [Guarded(dl.gpu.Matmul()), Guarded(dl.gpu.GEMV()), Guarded(dl.gpu.Reduction()),
            Guarded(dl.gpu.GeneralReduction()), dl.gpu.Fallback()]
