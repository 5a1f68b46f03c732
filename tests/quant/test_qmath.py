"""Scale / zero-point arithmetic: exact for known ranges."""

import numpy as np
import pytest

from lepton_passes.quant import qmath


def test_u8_asymmetric_known_range():
    p = qmath.activation_qparams(-1.0, 3.0, signed=False)
    assert p.scale == np.float32(4.0 / 255.0)
    assert p.zero_point.dtype == np.uint8 and int(p.zero_point) == 64  # round(1 / (4/255)) = round(63.75)
    # 0 is exact, the ends map to the ends of the grid
    assert qmath.dequantize(qmath.quantize(np.array([0.0]), p), p)[0] == 0.0
    assert qmath.quantize(np.array([-1.0, 3.0]), p).tolist() == [0, 255]


def test_range_is_widened_to_contain_zero():
    p = qmath.activation_qparams(2.0, 4.0, signed=False)  # becomes [0, 4]
    assert int(p.zero_point) == 0 and p.scale == np.float32(4.0 / 255.0)
    p = qmath.activation_qparams(-5.0, -1.0, signed=False)  # becomes [-5, 0]
    assert int(p.zero_point) == 255


def test_s8_symmetric_known_range():
    p = qmath.activation_qparams(-2.0, 1.0, signed=True)
    assert p.zero_point.dtype == np.int8 and int(p.zero_point) == 0
    assert p.scale == np.float32(2.0 / 127.0)
    assert qmath.quantize(np.array([-2.0, 2.0, 5.0]), p).tolist() == [-127, 127, 127]


def test_degenerate_range_gives_usable_scale():
    p = qmath.activation_qparams(0.0, 0.0, signed=False)
    assert p.scale > 0


def test_per_channel_weights():
    w = np.zeros((3, 2, 1, 1), np.float32)
    w[0] = 1.27
    w[1, 0] = -0.5
    w[2] = 0.0
    q, p = qmath.quantize_weight(w, axis=0)
    assert p.axis == 0 and p.scale.shape == (3,)
    np.testing.assert_allclose(p.scale, [0.01, 0.5 / 127, 1.0], rtol=1e-6)
    assert q.dtype == np.int8 and q[0].ravel().tolist() == [127, 127] and q[1, 0, 0, 0] == -127
    assert np.all(q[2] == 0)
    assert np.all(p.zero_point == 0)
    # reduce-range keeps weights in 7 bits
    q7, p7 = qmath.quantize_weight(w, axis=0, qmax=63)
    assert np.abs(q7).max() == 63


def test_int32_bias_scale_is_input_times_weight_scale():
    q, p = qmath.quantize_bias(np.array([0.5, -0.25], np.float32), 0.1, np.array([0.01, 0.02], np.float32))
    np.testing.assert_allclose(p.scale, [0.001, 0.002], rtol=1e-6)
    assert q.dtype == np.int32 and q.tolist() == [500, -125]
    assert np.all(p.zero_point == 0) and p.zero_point.dtype == np.int32


@pytest.mark.parametrize("signed", [False, True])
def test_round_trip_error_is_half_a_step(signed):
    x = np.linspace(-3, 5, 1001, dtype=np.float32)
    p = qmath.activation_qparams(-3, 5, signed)
    err = np.abs(qmath.dequantize(qmath.quantize(x, p), p) - x)
    assert err.max() <= p.max_scale / 2 + 1e-6
