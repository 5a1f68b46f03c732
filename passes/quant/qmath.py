"""Scale / zero-point arithmetic shared by the quantization passes.

Conventions (the ONNX QuantizeLinear definition): q = saturate(round_half_even(x / scale) + zp),
x' = (q - zp) * scale.

* Activations, u8 asymmetric: the real range is widened to contain 0 (so that 0, i.e. padding and
  ReLU outputs, is exactly representable), scale = (max - min) / 255, zp = round(-min / scale).
* Activations, s8 symmetric: scale = max(|min|, |max|) / 127, zp = 0.
* Weights: symmetric int8 in [-127, 127] (not -128: a symmetric grid keeps w and -w exact and
  avoids the lone -128 code that some integer kernels special-case), per output channel.
* Bias: int32 with scale = s_in * s_w (per output channel), zp = 0, so that the int32 accumulator of
  the integer kernel can add it without rescaling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Smallest scale we emit: a zero scale divides by zero in QuantizeLinear.
MIN_SCALE = 1e-12


@dataclass(frozen=True)
class QParams:
    """Quantization parameters of one tensor (per-tensor: `scale` is a 0-d array)."""

    scale: np.ndarray  # float32, 0-d or 1-d (per channel)
    zero_point: np.ndarray  # uint8 / int8 / int32, same shape as scale
    axis: int | None = None  # channel axis for per-channel parameters

    @property
    def dtype(self) -> np.dtype:
        return self.zero_point.dtype

    @property
    def max_scale(self) -> float:
        return float(np.max(self.scale))


def activation_qparams(rmin: float, rmax: float, signed: bool) -> QParams:
    """Parameters for an activation whose calibrated real range is [rmin, rmax].

    `signed=False`: uint8 asymmetric; `signed=True`: int8 symmetric (zp = 0).
    """
    rmin = min(float(rmin), 0.0)
    rmax = max(float(rmax), 0.0)
    if not np.isfinite(rmin) or not np.isfinite(rmax):
        raise ValueError(f"non-finite calibration range [{rmin}, {rmax}]")
    # A range of zero (a tensor that was 0 on every calibration sample): any scale keeps 0 exact,
    # but the consumer's int32 bias is quantized with s_in * s_w, so a scale of 1 made the bias as
    # coarse as the weights (differential finding quant8 x onnx #4: a depthwise Conv of zeros
    # returned its bias off by 0.007); the grid of [0, 1] keeps the bias fine, far from int32 limits.
    if signed:
        amax = max(-rmin, rmax)
        scale = amax / 127.0 if amax > 0 else 1.0 / 127.0
        return QParams(np.array(max(scale, MIN_SCALE), np.float32), np.array(0, np.int8))
    if rmax - rmin <= 0:
        return QParams(np.array(1.0 / 255.0, np.float32), np.array(0, np.uint8))
    scale = max((rmax - rmin) / 255.0, MIN_SCALE)
    zp = int(np.clip(np.round(-rmin / scale), 0, 255))
    return QParams(np.array(scale, np.float32), np.array(zp, np.uint8))


def weight_qparams(w: np.ndarray, axis: int | None, qmax: int = 127) -> QParams:
    """Symmetric int8 parameters for weights `w`, per channel along `axis` (None: per tensor)."""
    w = np.asarray(w, np.float32)
    if axis is None:
        amax = np.array(np.max(np.abs(w)) if w.size else 0.0, np.float32)
    else:
        axis = axis % w.ndim
        red = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.max(np.abs(w), axis=red) if w.size else np.zeros(w.shape[axis], np.float32)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    scale = np.maximum(scale, MIN_SCALE).astype(np.float32)
    return QParams(scale, np.zeros(scale.shape, np.int8), axis)


def _broadcast(p: QParams, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    s, z = p.scale.astype(np.float32), p.zero_point.astype(np.int64)
    if p.axis is not None and s.ndim == 1:
        shape = [1] * ndim
        shape[p.axis] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    return s, z


def quantize(x: np.ndarray, p: QParams) -> np.ndarray:
    """QuantizeLinear in numpy (round half to even, saturate to the zero point's type)."""
    s, z = _broadcast(p, np.ndim(x))
    info = np.iinfo(p.dtype)
    q = np.rint(np.asarray(x, np.float32) / s).astype(np.int64) + z
    return np.clip(q, info.min, info.max).astype(p.dtype)


def dequantize(q: np.ndarray, p: QParams) -> np.ndarray:
    s, z = _broadcast(p, np.ndim(q))
    return ((q.astype(np.int64) - z) * s).astype(np.float32)


def quantize_weight(w: np.ndarray, axis: int | None, qmax: int = 127) -> tuple[np.ndarray, QParams]:
    """(int8 weights, parameters): symmetric per-channel quantization of a constant."""
    p = weight_qparams(w, axis, qmax)
    q = quantize(w, p)
    return np.clip(q, -qmax, qmax).astype(np.int8), p


def quantize_bias(b: np.ndarray, input_scale: float, weight_scale: np.ndarray) -> tuple[np.ndarray, QParams]:
    """int32 bias with scale s_in * s_w[c] (per output channel), zero point 0.

    Saturates to int32 (only reachable with absurd scales; a saturated bias would show up as a
    large error in the report rather than silently wrap).
    """
    scale = (np.float32(input_scale) * np.asarray(weight_scale, np.float32)).astype(np.float32)
    scale = np.maximum(scale, MIN_SCALE).astype(np.float32)
    b = np.asarray(b, np.float32)
    scale_b = np.broadcast_to(scale, b.shape) if scale.ndim else scale
    q = np.clip(np.rint(b.astype(np.float64) / scale_b), -(2 ** 31), 2 ** 31 - 1).astype(np.int32)
    axis = 0 if scale.ndim == 1 and scale.size > 1 else None
    if axis is None:
        scale = np.array(scale.reshape(-1)[0] if scale.size == 1 else scale, np.float32)
    return q, QParams(scale, np.zeros(scale.shape, np.int32), axis)
