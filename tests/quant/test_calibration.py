"""Calibration methods on known distributions, streaming statistics and sample loading."""

import numpy as np
import pytest

from lepton_passes.quant.calibration import TensorStats, entropy_threshold, load_samples

from qfixtures import conv_relu_proto, load_proto


def _stats(x, chunks=1):
    s = TensorStats(keep_hist=True)
    for part in np.array_split(x.astype(np.float32), chunks):
        s.update(part)
    return s


def test_entropy_on_gaussian_with_outliers_is_tighter_than_minmax(rng):
    x = np.r_[rng.standard_normal(200_000), [40.0, -35.0]]
    s = _stats(x)
    lo_mm, hi_mm = s.range("minmax")
    assert (lo_mm, hi_mm) == (-35.0, 40.0)
    lo, hi = s.range("entropy")
    assert 2.5 < hi < 8 and -8 < lo < -2.5  # the bulk (|x| < ~4.5), not the outliers
    lo_p, hi_p = s.range("percentile", percentile=99.99)
    assert 3 < hi_p < 5
    lo_m, hi_m = s.range("mse")
    assert hi_m < hi_mm


def test_relu_like_data_keeps_the_full_positive_side(rng):
    x = np.maximum(rng.standard_normal(100_000), 0)
    for m in ("entropy", "percentile", "mse"):
        lo, hi = _stats(x).range(m)
        assert lo == 0.0 and hi > 2.5, m


def test_streaming_equals_one_shot_minmax_and_close_for_histograms(rng):
    x = rng.laplace(size=100_000) * np.linspace(0.1, 1.0, 100_000)  # growing range: re-binning
    one, many = _stats(x), _stats(x, chunks=20)
    assert one.range("minmax") == many.range("minmax")
    assert many.count == x.size
    for m in ("entropy", "percentile"):
        a, b = one.range(m)[1], many.range(m)[1]
        # Re-binning coarsens the early samples; the KL optimum is flat, so allow 20 %.
        assert abs(a - b) / a < 0.2, m


def test_entropy_threshold_of_uniform_keeps_everything():
    hist = np.ones(2048)
    assert entropy_threshold(hist, 1.0) > 0.9


def test_load_samples_npz_folder_random(tmp_path, rng):
    m = load_proto(conv_relu_proto(), tmp_path)
    x = rng.standard_normal((5, 1, 3, 12, 12)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x)
    feeds, n = load_samples(m, str(tmp_path / "c.npz"), batch=1)
    got = list(feeds)
    assert n == 5 and len(got) == 5 and got[0]["x"].shape == (1, 3, 12, 12)
    d = tmp_path / "samples"
    d.mkdir()
    for i in range(3):
        np.save(d / f"{i}.npy", x[i, 0])  # one sample without the batch axis
    feeds, n = load_samples(m, str(d))
    assert n == 3 and [f["x"].shape for f in feeds] == [(1, 3, 12, 12)] * 3
    feeds, n = load_samples(m, "random:4")
    assert n == 4 and len(list(feeds)) == 4
    with pytest.raises(Exception):
        load_samples(m, str(tmp_path / "missing.npz"))
