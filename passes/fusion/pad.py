"""Folding an explicit Pad into the padding of the Conv or pooling op that reads it.

Legality (each a near-miss reason when it fails):

* Pad mode is `constant`, its pads are constant, non-negative (a negative pad crops), zero on
  the batch and channel axes, and no `axes` input is given;
* the consumer has `auto_pad` NOTSET (explicit pads that we can add to);
* Conv: the pad value is 0 (Conv pads with zeros);
* AveragePool: the pad value is 0, `ceil_mode` is 0 (with ceil mode, windows hanging past the
  end are averaged over fewer elements), and the pool either has no pads of its own or already
  counts pads (`count_include_pad=1`); the result has `count_include_pad=1`, because the padded
  zeros were real elements that the original pool counted in its divisor; every merged pad is
  smaller than the kernel (ONNX Runtime rejects pool pads that are not);
* MaxPool: the pad value is -inf (only then is a padded element never the maximum, matching
  MaxPool's own padding), `ceil_mode` 0, the Indices output unused, and every total pad smaller
  than the kernel (so no window sees only padding, where the two forms would differ).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lepton_ir import Node, Value

from ..rewrite import Match, PatternBuilder, RewriteBuilder, Rule
from ..util import constant_value
from .common import FusionRule, const_ints, node_attrs, secondary_outputs_unused


def pad_spec(pad: Node) -> tuple[list[int], float] | str:
    """(pads, value) of a constant-mode Pad, or why it cannot be folded."""
    mode = pad.attr("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "constant":
        return f"Pad mode is {mode}"
    if "pads" in pad.attrs:  # opset < 11
        pads = [int(p) for p in pad.attr("pads")]
        value = float(pad.attr("value", 0.0))
    else:
        ins = pad.inputs
        pads_c = const_ints(ins[1]) if len(ins) > 1 else None
        if pads_c is None:
            return "pads are not constant"
        pads = pads_c
        value = 0.0
        if len(ins) > 2 and ins[2] is not None:
            c = constant_value(ins[2])
            if c is None or c.size != 1:
                return "pad value is not a constant scalar"
            value = float(c.reshape(()))
        if len(ins) > 3 and ins[3] is not None:
            return "Pad has an axes input"
    if any(p < 0 for p in pads):
        return "negative pads (cropping)"
    r = len(pads) // 2
    if r < 3 or pads[0] or pads[1] or pads[r] or pads[r + 1]:
        return "pads on the batch or channel axis"
    return pads, value


def _merged(pads: list[int], own: list[int] | None) -> list[int]:
    r = len(pads) // 2
    spatial = pads[2:r] + pads[r + 2:]
    own = own or [0] * len(spatial)
    return [a + b for a, b in zip(spatial, own)]


def _pads_below_kernel(pads: list[int], consumer: Node) -> str | None:
    """Pools need every pad smaller than the kernel: ONNX Runtime rejects larger ones, and for
    MaxPool a window of pure padding would differ from the explicitly padded form."""
    kernel = consumer.attr("kernel_shape")
    merged = _merged(pads, list(consumer.attr("pads")) if consumer.attr("pads") is not None else None)
    k = len(merged) // 2
    if kernel is None or any(p >= kernel[i % k] for i, p in enumerate(merged)):
        return "a merged pad is not smaller than the kernel"
    return None


class _PadInto(FusionRule):
    consumer = ""

    def pattern(self, op: PatternBuilder, x: Any) -> Any:
        pad = op.Pad(x, _allow_other_inputs=True, _name="pad")
        return getattr(op, self.consumer)(pad, _allow_other_inputs=True, _name="consumer")

    def legal(self, pads: list[int], value: float, consumer: Node) -> str | None:
        raise NotImplementedError

    def check(self, match: Match, x: Value, pad: Node, consumer: Node) -> str | None:
        spec = pad_spec(pad)
        if isinstance(spec, str):
            return spec
        auto = consumer.attr("auto_pad", "NOTSET")
        if (auto.decode() if isinstance(auto, bytes) else auto) != "NOTSET":
            return "consumer uses auto_pad"
        own = consumer.attr("pads")
        if own is not None and len(own) != len(spec[0]) - 4:
            return "pads rank mismatch"
        return self.legal(spec[0], spec[1], consumer)

    def new_attrs(self, consumer: Node) -> dict[str, Any]:
        return dict(node_attrs(consumer, drop=("pads",)))

    def rewrite(self, op: RewriteBuilder, x: Value, pad: Node, consumer: Node) -> Value:
        spec = pad_spec(pad)
        assert not isinstance(spec, str)
        own = consumer.attr("pads")
        pads = _merged(spec[0], list(own) if own is not None else None)
        ins = [x, *consumer.inputs[1:]]
        outs = getattr(op, self.consumer)(*ins, _outputs=1, pads=pads, **self.new_attrs(consumer))
        return outs


class PadIntoConv(_PadInto):
    """Conv(Pad(x, zeros)) -> Conv(x, pads=conv.pads + pad)."""

    name = "pad-into-conv"
    consumer = "Conv"

    def legal(self, pads: list[int], value: float, consumer: Node) -> str | None:
        return None if value == 0.0 else f"pad value {value} is not 0"


class PadIntoAveragePool(_PadInto):
    """AveragePool(Pad(x, zeros)) -> AveragePool(x, pads, count_include_pad=1)."""

    name = "pad-into-averagepool"
    consumer = "AveragePool"

    def legal(self, pads: list[int], value: float, consumer: Node) -> str | None:
        if value != 0.0:
            return f"pad value {value} is not 0"
        if consumer.attr("ceil_mode", 0):
            return "ceil_mode=1"
        own = consumer.attr("pads")
        if own is not None and any(own) and not consumer.attr("count_include_pad", 0):
            return "pool pads exclude padding from the divisor (count_include_pad=0)"
        return _pads_below_kernel(pads, consumer)

    def new_attrs(self, consumer: Node) -> dict[str, Any]:
        attrs = super().new_attrs(consumer)
        attrs.pop("count_include_pad", None)
        attrs["count_include_pad"] = 1
        return attrs


class PadIntoMaxPool(_PadInto):
    """MaxPool(Pad(x, -inf)) -> MaxPool(x, pads)."""

    name = "pad-into-maxpool"
    consumer = "MaxPool"

    def legal(self, pads: list[int], value: float, consumer: Node) -> str | None:
        if not (np.isinf(value) and value < 0):
            return f"pad value {value} is not -inf (a padded element could be the maximum)"
        if consumer.attr("ceil_mode", 0):
            return "ceil_mode=1"
        if not secondary_outputs_unused(consumer):
            return "Indices output is used"
        return _pads_below_kernel(pads, consumer)


def pad_rules() -> list[Rule]:
    return [PadIntoConv(), PadIntoAveragePool(), PadIntoMaxPool()]
