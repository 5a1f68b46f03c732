"""silero-vad (If nodes on the `sr` input around LSTMs) compiles for TVM once `sr` is bound:
bind-inputs -> canonicalize folds the Ifs, legalize unrolls the LSTMs. Checked against ONNX
Runtime on the original model with the same sr."""

from __future__ import annotations

import numpy as np

import lepton
from lepton_ir.reference import run_ort
from lepton_ir.testing.corpus import real_model_path, realistic_inputs


def test_silero_vad_with_bound_sample_rate(tmp_path, request):
    path = real_model_path("silero-vad")
    inputs = realistic_inputs("silero-vad")
    assert int(inputs["sr"]) == 16000
    shapes = {k: list(v.shape) for k, v in inputs.items() if k != "sr"}
    lepton.optimize(str(path), passes='bind-inputs{values=["sr=16000"]},canonicalize', backend="tvm-cpu",
                    output=tmp_path / "silero", input_shapes=shapes)
    got = lepton.load(tmp_path / "silero").run({k: v for k, v in inputs.items() if k != "sr"})
    ref = run_ort(path, inputs, optimize=True)
    for g, r in zip(got.values(), ref):
        np.testing.assert_allclose(g, r, rtol=1e-3, atol=1e-4)
