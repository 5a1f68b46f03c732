"""`min-sqnr`: an activation whose expected int8 SQNR is too low is left in float, and the expected
SQNR computed from the calibration histogram matches the measured one."""

import numpy as np
import pytest

from lepton_passes import run_onnxruntime
from lepton_passes.quant import Quant8, qmath
from lepton_passes.quant.calibration import TensorStats
from lepton_passes.util import constant_value

from qfixtures import calib_file, load_proto, matmul_proto


def _outlier_samples(rng, n=16):
    x = rng.standard_normal((n, 4, 16)).astype(np.float32)
    x[:, :, 0] = 60.0 + rng.standard_normal((n, 4))  # one channel far outside the bulk (BERT-style)
    return x


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile", "mse"])
def test_expected_sqnr_matches_measured(rng, method):
    x = np.r_[rng.standard_normal(50_000), rng.laplace(size=5_000) * 4].astype(np.float32)
    st = TensorStats(keep_hist=True)
    st.update(x)
    lo, hi = st.range(method)
    p = qmath.activation_qparams(lo, hi, signed=False)
    xq = qmath.dequantize(qmath.quantize(x, p), p)
    measured = 10 * np.log10(np.sum(x.astype(np.float64) ** 2) / np.sum((x - xq).astype(np.float64) ** 2))
    assert abs(st.expected_sqnr(lo, hi, p.max_scale) - measured) < 3.0


def test_low_sqnr_activation_falls_back_to_float(tmp_path, rng):
    xs = _outlier_samples(rng)
    cal = calib_file(tmp_path, {"x": xs})
    fm = load_proto(matmul_proto(), tmp_path, "f.onnx")
    # The outlier channel stretches the u8 grid: ~46 dB expected; a 60 dB floor sends it to float.
    qm = load_proto(matmul_proto(), tmp_path)
    Quant8(calib=cal, calibration="minmax", min_sqnr=60.0, progress=False).run(qm)
    mm = next(n for n in qm.graph if n.op_type == "MatMul")
    assert constant_value(mm.inputs[1]).dtype == np.float32 and mm.inputs[1].producer() is None
    ref = run_onnxruntime(fm, {"x": xs[0]})[0]
    np.testing.assert_allclose(run_onnxruntime(qm, {"x": xs[0]})[0], ref, rtol=1e-6, atol=1e-6)
    # Without the floor the MatMul runs on int8.
    qm2 = load_proto(matmul_proto(), tmp_path, "q2.onnx")
    Quant8(calib=cal, calibration="minmax", min_sqnr=0.0, progress=False).run(qm2)
    mm2 = next(n for n in qm2.graph if n.op_type == "MatMul")
    assert mm2.inputs[1].producer().op_type == "DequantizeLinear"
