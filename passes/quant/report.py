"""The quantization report: per-layer SQNR, model-level agreement and sizes.

`quant_report(float_model, quant_model, samples)` runs both models in ONNX Runtime on the samples
(streaming: only running sums are kept) and returns a JSON-able dict:

* ``layers``: for each activation quantizer of the quantized model, the float tensor it stands for
  (``ref``), and SQNR = 10 log10(sum x^2 / sum (x - x_q)^2) in dB between that float tensor in the
  float model and the dequantized tensor in the quantized model. The quantized side carries all the
  error accumulated up to that point, so a sudden drop marks the layer that hurts.
* ``outputs``: per graph output, SQNR, max |error|, mean cosine similarity per sample and, for
  [batch, classes] outputs, the top-1 agreement. The model-level run uses ONNX
  Runtime with all optimizations, i.e. the integer kernels it fuses QDQ into.
* ``size``: serialized bytes before and after.

`format_report(report)` gives the text table.
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterator, Mapping

import numpy as np

from lepton_ir import Model, Value
from lepton_ir.reference import ort_session

from ..util import constant_value
from .calibration import ort_session_with_outputs


def _iter_samples(samples: Any) -> Iterator[dict[str, np.ndarray]]:
    """Samples as feed dicts: a mapping name -> array (first axis = samples; fed one at a time,
    keeping a batch axis of 1) or an iterable of feed dicts."""
    if isinstance(samples, Mapping):
        n = min(np.asarray(a).shape[0] for a in samples.values())
        for i in range(n):
            yield {k: np.asarray(a)[i:i + 1] for k, a in samples.items()}
    else:
        for feed in samples:
            yield dict(feed)


def quantizer_pairs(quant_model: Model) -> list[tuple[str, Value]]:
    """(float tensor name, dequantized value) for each activation QuantizeLinear -> DequantizeLinear."""
    out: list[tuple[str, Value]] = []
    for n in quant_model.graph:
        if n.op_type != "QuantizeLinear" or constant_value(n.inputs[0]) is not None:
            continue
        ref = n.metadata_props.get("lepton.quant.ref") or (n.inputs[0].name or "")
        dqs = [u for u in n.outputs[0].users() if u.op_type == "DequantizeLinear"]
        if ref and dqs:
            out.append((ref, dqs[0].outputs[0]))
    return out


def _sqnr(signal: float, noise: float) -> float:
    if noise <= 0:
        return math.inf
    if signal <= 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _model_bytes(model: Model) -> int:
    import lepton_ir

    return len(lepton_ir.to_onnx(model).SerializeToString())


def _full_session(model: Model):
    # Optimized: the report measures what ONNX Runtime's fused integer kernels compute.
    return ort_session(model, optimize=True)


def quant_report(float_model: Model, quant_model: Model, samples: Any) -> dict[str, Any]:
    """Per-layer SQNR, model-level agreement and sizes of `quant_model` against `float_model`."""
    pairs = quantizer_pairs(quant_model)
    fvals = {v.name: v for v in float_model.graph.values() if v.name}
    pairs = [(r, q) for r, q in pairs if r in fvals]
    f_sess = ort_session_with_outputs(float_model, [fvals[r] for r, _ in pairs])
    q_sess = ort_session_with_outputs(quant_model, [q for _, q in pairs])
    qf_sess = _full_session(quant_model)
    f_out = [o.name for o in f_sess.get_outputs()]
    q_out = [o.name for o in q_sess.get_outputs()]
    n_outputs = len(float_model.graph.outputs)
    layer_acc = {r: [0.0, 0.0] for r, _ in pairs}
    out_acc = [{"signal": 0.0, "noise": 0.0, "max_abs": 0.0, "cos": [], "agree": 0, "total": 0}
               for _ in range(n_outputs)]
    in_names = {i.name for i in f_sess.get_inputs()}
    count = 0
    for feed in _iter_samples(samples):
        feed = {k: v for k, v in feed.items() if k in in_names}
        fr = dict(zip(f_out, f_sess.run(None, feed)))
        qr = dict(zip(q_out, q_sess.run(None, feed)))
        qfull = qf_sess.run(None, feed)
        count += 1
        for r, q in pairs:
            a = np.asarray(fr[r], np.float64)
            b = np.asarray(qr[q.name], np.float64)
            if a.shape != b.shape:
                continue
            layer_acc[r][0] += float(np.sum(a * a))
            layer_acc[r][1] += float(np.sum((a - b) ** 2))
        for k in range(n_outputs):
            a = np.asarray(fr[f_out[k]])
            b = np.asarray(qfull[k])
            if a.dtype.kind != "f" or a.shape != b.shape:
                continue
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            acc = out_acc[k]
            acc["signal"] += float(np.sum(a64 * a64))
            acc["noise"] += float(np.sum((a64 - b64) ** 2))
            acc["max_abs"] = max(acc["max_abs"], float(np.max(np.abs(a64 - b64))) if a.size else 0.0)
            fa, fb = a64.reshape(-1), b64.reshape(-1)
            den = np.linalg.norm(fa) * np.linalg.norm(fb)
            acc["cos"].append(float(fa @ fb / den) if den > 0 else 1.0)
            if a.ndim == 2 and a.shape[-1] > 1:  # [batch, classes]
                acc["agree"] += int(np.sum(np.argmax(a, -1) == np.argmax(b, -1)))
                acc["total"] += int(np.prod(a.shape[:-1]))
    layers = []
    for r, _ in pairs:
        s, nz = layer_acc[r]
        layers.append({"tensor": r, "sqnr_db": _sqnr(s, nz)})
    outputs = []
    for k, acc in enumerate(out_acc):
        item: dict[str, Any] = {"name": float_model.graph.outputs[k].name, "sqnr_db": _sqnr(acc["signal"], acc["noise"]),
                                "max_abs_error": acc["max_abs"],
                                "mean_cosine": float(np.mean(acc["cos"])) if acc["cos"] else None}
        if acc["total"]:
            item["top1_agreement"] = acc["agree"] / acc["total"]
        outputs.append(item)
    fb, qb = _model_bytes(float_model), _model_bytes(quant_model)
    return {"samples": count, "layers": layers, "outputs": outputs,
            "size": {"float_bytes": fb, "quant_bytes": qb, "ratio": qb / fb if fb else None},
            "metadata": dict(quant_model.metadata_props)}


def _db(x: float) -> str:
    return "inf" if x == math.inf else ("-inf" if x == -math.inf else f"{x:6.1f}")


def format_report(report: Mapping[str, Any], max_layers: int | None = None) -> str:
    """The report as a text table (worst layers first when `max_layers` cuts it)."""
    lines = [f"quantization report ({report['samples']} samples)"]
    size = report["size"]
    lines.append(f"size: {size['float_bytes'] / 1e6:.2f} MB -> {size['quant_bytes'] / 1e6:.2f} MB "
                 f"({size['ratio']:.2f}x)")
    lines.append("outputs:")
    for o in report["outputs"]:
        extra = f"  top1-agree {o['top1_agreement'] * 100:.2f}%" if "top1_agreement" in o else ""
        cos = f"{o['mean_cosine']:.5f}" if o["mean_cosine"] is not None else "-"
        lines.append(f"  {o['name']:<32} SQNR {_db(o['sqnr_db'])} dB  max|err| {o['max_abs_error']:.4g}  "
                     f"cos {cos}{extra}")
    layers = list(report["layers"])
    if max_layers is not None and len(layers) > max_layers:
        layers = sorted(layers, key=lambda x: x["sqnr_db"])[:max_layers]
        lines.append(f"layers (worst {max_layers} of {len(report['layers'])}):")
    else:
        lines.append("layers:")
    for la in layers:
        lines.append(f"  {la['tensor']:<48} SQNR {_db(la['sqnr_db'])} dB")
    return "\n".join(lines)


def report_json(report: Mapping[str, Any]) -> str:
    """JSON text of a report (infinities written as strings, which JSON lacks)."""
    def fix(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return str(x)
        if isinstance(x, dict):
            return {k: fix(v) for k, v in x.items()}
        if isinstance(x, list):
            return [fix(v) for v in x]
        return x
    return json.dumps(fix(report), indent=2)
