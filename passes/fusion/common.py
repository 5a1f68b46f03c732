"""Helpers shared by the fusion rules: opsets, attributes, constants and broadcasting checks."""

from __future__ import annotations

from typing import Any

import numpy as np

from lepton_ir import Attr, Model, Node, Value

from ..rewrite import Match, Rule
from ..util import constant_value, static_shape

MS_DOMAIN = "com.microsoft"


def default_opset(model: Model | None) -> int:
    """The model's default-domain opset (17 when unknown, the IR's own default)."""
    if model is None:
        return 17
    return model.opset("") or 17


def import_domain(model: Model | None, domain: str, version: int = 1) -> None:
    """Add `domain` to the model's opset imports (fused ops and contrib ops need it)."""
    if model is not None and domain not in model.opset_imports:
        model.opset_imports[domain] = version


def node_attrs(node: Node, drop: tuple[str, ...] = ()) -> dict[str, Attr]:
    """The node's attributes as a dict ready for `op.X(..., **attrs)` (Attr objects keep kinds)."""
    return {k: Attr(a.name, a.type, a.value, a.ref, a.doc) for k, a in node.attrs.items() if k not in drop}


def rank_of(v: Value | None) -> int | None:
    """The static rank of `v` if its type says (dims may be symbolic)."""
    if v is None:
        return None
    c = constant_value(v)
    if c is not None:
        return c.ndim
    s = v.shape
    if s is None:
        return None
    try:
        return len(s)
    except TypeError:
        return None


def shape_of(v: Value | None) -> tuple[int, ...] | None:
    """Fully static shape of `v` (from its constant or its type)."""
    c = constant_value(v)
    if c is not None:
        return tuple(c.shape)
    return static_shape(v)


def dims_of(v: Value | None) -> list[Any] | None:
    """Dims of `v`, ints where known and None/str (symbols) elsewhere, or None if rank unknown."""
    c = constant_value(v)
    if c is not None:
        return list(c.shape)
    s = v.shape if v is not None else None
    if s is None:
        return None
    try:
        return [d if isinstance(d, int) else None for d in s.dims]  # type: ignore[union-attr]
    except Exception:
        return None


def is_float_value(v: Value | None) -> bool:
    dt = v.dtype if v is not None else None
    return dt is not None and dt.is_float


def secondary_outputs_unused(node: Node) -> bool:
    """True if only output 0 of `node` is read (e.g. BatchNormalization's training outputs)."""
    return not any(o.num_uses() or o.is_graph_output() for o in node.outputs[1:])


def channel_vector(c: np.ndarray, out_rank: int, axis: int, channels: int) -> np.ndarray | str:
    """Per-channel vector equal to constant `c` broadcast against an output of rank `out_rank`.

    Legal only if `c` varies (at most) along `axis` and broadcasting it does not change the
    output's shape: rank no higher than the output's and every other dim equal to 1.
    Returns the length-`channels` vector, or the reason it is not per-channel.
    """
    if c.ndim > out_rank:
        return f"constant of rank {c.ndim} would broadcast the rank-{out_rank} output up"
    padded = (1,) * (out_rank - c.ndim) + tuple(c.shape)
    for i, d in enumerate(padded):
        if i == axis:
            if d not in (1, channels):
                return f"constant dim {d} on the channel axis does not match {channels} channels"
        elif d != 1:
            return f"constant varies along axis {i}, not only the channel axis {axis}"
    return np.broadcast_to(c.reshape(-1) if c.size > 1 else c.reshape(()), (channels,)).astype(np.float64)


def scalar_of(v: Value | None) -> float | None:
    """The value of a one-element constant, else None."""
    c = constant_value(v)
    if c is None or c.size != 1:
        return None
    try:
        return float(c.reshape(()))
    except (TypeError, ValueError):
        return None


def const_ints(v: Value | None) -> list[int] | None:
    c = constant_value(v)
    if c is None or c.dtype.kind not in "iu":
        return None
    return [int(x) for x in c.reshape(-1)]


class FusionRule(Rule):
    """Base of the fusion rules: a check that raises (e.g. on an attribute of an unexpected kind in
    a model we never saw) rejects the match with the error as its near-miss reason instead of
    aborting the whole pass; the rewrite only runs after a check that returned cleanly."""

    def match(self, node: Node) -> tuple[Match | None, str | None]:
        try:
            return super().match(node)
        except Exception as e:  # noqa: BLE001 - any failure of a legality check means "not legal"
            return None, f"check raised {type(e).__name__}: {e}"
