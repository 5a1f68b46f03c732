"""`tvm-cuda` artifacts carry device code compiled with nvcc (a fatbin with the sm_XX cubin).

TVM 0.27 keeps CUDA kernels in model.so as CUDA C source and compiles them when the library is
loaded (NVRTC or nvcc on the GPU machine). The tvm-cuda backend compiles that source with nvcc at
build time, for exactly the target's arch, and ships the fatbins beside model.so (hashed in the
manifest); `lepton_backends.tvm.cuda.load_cuda_artifact` hands them to TVM at load time, so the GPU
machine needs no compiler. These tests need nvcc but no GPU; running the artifacts on a GPU is
`scripts/cuda_check.sh`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("tvm")

from lepton_backends.tvm import cuda as tvm_cuda  # noqa: E402

pytestmark = pytest.mark.skipif(tvm_cuda.nvcc_path() is None,
                                reason="nvcc (CUDA toolkit) not installed: tvm-cuda needs it to compile device code")


def _model(name: str):
    from lepton_ir.testing import corpus

    if name == "digits":
        return corpus.digits_model_path(), {"image": [1, 1, 8, 8]}
    try:
        path = corpus.real_model_path(name)
    except FileNotFoundError as e:
        pytest.skip(f"{name} is not fetched ({e})")
    # bound inputs are compiled in by bind-inputs (corpus.tvm_passes)
    return path, {k: list(v.shape) for k, v in corpus.tvm_feeds(name, corpus.realistic_inputs(name, batch=1)).items()}


# Every real model (bench/cuda_models.py sweeps them all with timings); all but the two quick
# ones only in the slow run (30-120 s each on a 2-core host).
_SLOW = ["ppocr-det", "ppocr-rec", "ppocr-cls", "silero-vad", "silero-vad-ifless", "minilm-l3", "ddddocr-old"]
MODELS = ["digits", "magika", *(pytest.param(n, marks=pytest.mark.slow) for n in _SLOW)]


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("name", MODELS)
def test_artifact_holds_cubin_for_arch(tmp_path, name, arch, request):
    import lepton
    from lepton_backends.tvm import ArtifactError, load_artifact, read_manifest

    from lepton_ir.testing.corpus import tvm_passes

    if name in _SLOW and "slow" not in (request.config.getoption("-m") or ""):
        pytest.skip("slow to compile on a 2-core host; run with -m slow")
    path, shapes = _model(name)
    out = tmp_path / f"{name}-{arch}"
    lepton.optimize(str(path), passes=tvm_passes(name) if name != "digits" else "canonicalize", backend="tvm-cuda",
                    target=arch, output=out, input_shapes=shapes)
    m = read_manifest(out)  # verifies every hash, fatbins included
    assert m["target"]["kind"] == "cuda" and m["target"]["arch"] == arch
    info = m["extra"]["cuda"]
    assert info["device_code"] == "fatbin" and info["arch"] == arch and info["kernels"]
    library = (out / "model.so").read_bytes()
    for key, fname in info["kernels"].items():
        assert fname in m["files"]
        blob = (out / fname).read_bytes()
        archs = tvm_cuda.fatbin_archs(blob)
        assert archs["elf"] == [arch], archs  # SASS for exactly this arch: runs without a JIT
        assert archs["ptx"] == [arch], archs  # plus PTX, for newer GPUs
        # the fatbin belongs to the kernels the library holds (looked up by source hash at load)
        assert len(key) == 64
    assert b"extern \"C\" __global__" in library
    with pytest.raises(ArtifactError, match="needs a GPU runner"):
        load_artifact(out)  # the CPU loader refuses it; load_cuda_artifact runs it on a GPU


def test_fatbin_hash_is_checked(tmp_path):
    import lepton
    from lepton_backends.tvm import ArtifactError

    path, shapes = _model("digits")
    out = tmp_path / "d"
    lepton.optimize(str(path), passes="canonicalize", backend="tvm-cuda", target="sm_80", output=out,
                    input_shapes=shapes)
    stage = json.loads((out / "manifest.json").read_text())["stages"][0]
    assert stage["backend"] == "tvm-cuda" and stage["device"] == "cuda"  # a CUDA artifact says it is CUDA
    fname = next(iter(stage["extra"]["cuda"]["kernels"].values()))
    with open(out / fname, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match=f"{fname} does not match its sha256"):
        tvm_cuda.load_cuda_artifact(out)


def test_non_cuda_target_is_refused(tmp_path):
    import lepton
    from lepton_backends import BackendError

    path, shapes = _model("digits")
    with pytest.raises(BackendError, match="not a tvm-cuda target; its targets: sm_75"):
        lepton.optimize(str(path), passes="canonicalize", backend="tvm-cuda", target="cortex-a72",
                        output=tmp_path / "x", input_shapes=shapes)


def test_fatbin_archs_parser():
    blob = tvm_cuda.compile_fatbin('extern "C" __global__ void k(float* x) { x[threadIdx.x] += 1.0f; }', "sm_75")
    assert blob[:4] == tvm_cuda.FATBIN_MAGIC
    assert tvm_cuda.fatbin_archs(b"junk" + blob + b"junk") == {"elf": ["sm_75"], "ptx": ["sm_75"]}
    assert tvm_cuda.fatbin_archs(b"no fatbin here") == {"elf": [], "ptx": []}


@pytest.mark.gpu
def test_runs_on_gpu(tmp_path):
    """On a GPU machine: the artifact runs (no compiler used) and matches ONNX Runtime."""
    import tvm

    if not tvm.cuda(0).exist:
        pytest.skip("no CUDA GPU on this machine (scripts/cuda_check.sh runs this on one)")
    import lepton
    from lepton_ir.testing import corpus

    x, _ = corpus.digits_dataset("test")
    x = np.ascontiguousarray(x[:1], dtype=np.float32)
    out = tmp_path / "d"
    lepton.optimize(str(corpus.digits_model_path()), passes="canonicalize", backend="tvm-cuda", output=out,
                    target="sm_90" if "9.0" in str(tvm.cuda(0).compute_version) else "sm_80",
                    input_shapes={"image": [1, 1, 8, 8]})
    got = tvm_cuda.load_cuda_artifact(out).run({"image": x})["logits"]
    import onnxruntime as ort

    want = ort.InferenceSession(str(corpus.digits_model_path()), providers=["CPUExecutionProvider"]).run(
        None, {"image": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
