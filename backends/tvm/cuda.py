"""The ``tvm-cuda`` backend: TVM for NVIDIA GPUs, with the device code compiled ahead of time.

``--backend tvm-cuda --target sm_80`` (presets sm_75, sm_80, sm_86, sm_89, sm_90; default sm_80).

What TVM 0.27 does by itself: CUDA codegen emits CUDA C and hands it to the global function
``tvm_callback_cuda_compile`` (registered by ``tvm.support.nvcc``), which by default uses NVRTC
(needs the ``cuda-bindings`` package) or, with ``TVM_CUDA_COMPILE_MODE=nvcc``, nvcc; when neither
works the build fails or, on TVM builds without the callback, keeps CUDA *source* in the module,
which then needs a compiler at load time on the GPU machine. This backend does not depend on that
environment: while it builds it installs its own ``tvm_callback_cuda_compile`` that runs **nvcc**
for exactly the target's architecture and returns a **fatbin** holding the ``sm_XX`` cubin (SASS,
runs without any compiler or JIT) plus ``compute_XX`` PTX (lets newer GPUs JIT it). The manifest
records this under ``extra.cuda`` = ``{"device_code": "fatbin", "arch": "sm_80", "nvcc": "13.0"}``.

The stage's manifest entry says ``backend: tvm-cuda``, ``device: cuda``; ``lepton.load`` opens it
on this machine's GPU (``load_cuda_artifact``), and ``scripts/cuda_check.sh`` runs such artifacts
on a GPU machine and compares them with ONNX Runtime.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator

from lepton_backends.base import BackendError, register_backend

from .backend import TvmCpuBackend, target_dict_for

DEFAULT_TARGET = "sm_80"
FATBIN_MAGIC = b"\x50\xed\x55\xba"  # 0xBA55ED50, little-endian: the fatbin container header


def nvcc_path() -> str | None:
    """nvcc on PATH, else the usual /usr/local/cuda/bin/nvcc; None when absent."""
    found = shutil.which("nvcc")
    if found:
        return found
    for p in ("/usr/local/cuda/bin/nvcc",):
        if os.access(p, os.X_OK):
            return p
    return None


def nvcc_version(nvcc: str | None = None) -> str:
    nvcc = nvcc or nvcc_path()
    if not nvcc:
        return "none"
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else "unknown"


def compile_fatbin(code: str, arch: str, nvcc: str | None = None) -> bytes:
    """CUDA C -> fatbin with the ``sm_XX`` cubin and ``compute_XX`` PTX (nvcc, -O3)."""
    nvcc = nvcc or nvcc_path()
    if not nvcc:
        raise BackendError("tvm-cuda: nvcc (CUDA toolkit) is not on PATH; it is needed to compile device code")
    m = re.fullmatch(r"sm_(\d+)a?", arch)
    if not m:
        raise BackendError(f"tvm-cuda: target arch {arch!r} is not of the form sm_XX")
    num = m.group(1)
    with tempfile.TemporaryDirectory(prefix="lepton-nvcc-") as d:
        src, dst = Path(d) / "kernels.cu", Path(d) / "kernels.fatbin"
        src.write_text(code)
        cmd = [nvcc, "--fatbin", "-O3", "--use_fast_math", "--expt-relaxed-constexpr",
               "-gencode", f"arch=compute_{num},code=[{arch},compute_{num}]",
               "-o", str(dst), str(src)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            lines = [ln for ln in (p.stderr or p.stdout).splitlines() if ln.strip()]
            raise BackendError(f"tvm-cuda: nvcc failed for {arch}: {lines[0] if lines else p.returncode}")
        return dst.read_bytes()


@contextlib.contextmanager
def capture_cuda_source() -> Iterator[list[str]]:
    """Collect the CUDA C that TVM's codegen emits (through ``tvm_callback_cuda_postproc``,
    returned unchanged, so the library holds exactly the text collected here)."""
    import tvm_ffi

    name = "tvm_callback_cuda_postproc"
    previous = tvm_ffi.get_global_func(name, allow_missing=True)
    sources: list[str] = []

    def _postproc(code, *_rest):
        code = str(previous(code, *_rest)) if previous is not None else str(code)
        sources.append(code)
        return code

    tvm_ffi.register_global_func(name, _postproc, override=True)
    try:
        yield sources
    finally:
        if previous is not None:
            tvm_ffi.register_global_func(name, previous, override=True)
        else:
            tvm_ffi.register_global_func(name, lambda code, *_: code, override=True)


def source_key(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


@register_backend
class TvmCudaBackend(TvmCpuBackend):
    """TVM for NVIDIA GPUs (--target sm_75..sm_90, default sm_80): fatbin device code compiled with nvcc."""

    name = "tvm-cuda"
    default_target = DEFAULT_TARGET

    def build(self, model, staging: Path, *, target: str | None, options: Any) -> dict[str, Any]:
        spec = target or self.default_target
        d = target_dict_for("tvm-cuda", spec)
        if d.get("kind") != "cuda" or not str(d.get("arch", "")).startswith("sm_"):
            raise BackendError(f"tvm-cuda: target {spec!r} is not a CUDA target with an arch; use one of "
                               "sm_75, sm_80, sm_86, sm_89, sm_90")
        arch = str(d["arch"])
        nvcc = nvcc_path()
        if nvcc is None:
            raise BackendError("tvm-cuda: nvcc (CUDA toolkit) is not on PATH; it is needed to compile device code")
        with capture_cuda_source() as sources:
            stage = super().build(model, staging, target=spec, options=options)
        if not sources:
            raise BackendError(f"tvm-cuda: TVM produced no CUDA kernels for {arch}")
        kernels = {}
        for code in sources:
            key = source_key(code)
            fname = f"{KERNEL_PREFIX}{key[:16]}.fatbin"
            (staging / fname).write_bytes(compile_fatbin(code, arch, nvcc))
            kernels[key] = fname
        stage.setdefault("extra", {})["cuda"] = {"device_code": "fatbin", "arch": arch, "nvcc": nvcc_version(nvcc),
                                                 "kernels": kernels}
        return stage

    def load(self, folder: Path, stage: dict[str, Any]):
        from lepton_ir import ModelLoadError

        from .artifact import ArtifactError
        from .backend import TvmRunner

        try:
            return TvmRunner(load_cuda_stage(folder, stage))
        except ArtifactError as e:
            raise ModelLoadError(str(e)) from None


KERNEL_PREFIX = "cuda-kernels-"


def load_cuda_artifact(path: str | os.PathLike, device_id: int = 0):
    """Verify and load a single-stage ``tvm-cuda`` artifact on this machine's GPU (see
    :func:`load_cuda_stage`)."""
    from .artifact import read_manifest

    root = Path(path)
    return load_cuda_stage(root, read_manifest(root, verify=True), device_id)


def load_cuda_stage(root: Path, manifest: dict[str, Any], device_id: int = 0):
    """Open a verified ``tvm-cuda`` stage on this machine's GPU, without any CUDA compiler.

    TVM 0.27 stores CUDA kernels in ``model.so`` as source (format ``cuda``) and compiles them when
    the library is loaded, through ``tvm_callback_cuda_compile``. Here that callback answers with
    the fatbin nvcc built at compile time (looked up by the source's sha256; every file's hash was
    verified when the artifact was read), so nothing is compiled on the GPU machine.
    """
    import tvm
    import tvm_ffi
    from tvm.runtime.vm import VirtualMachine

    from .artifact import LIBRARY, ArtifactError, Runner

    info = (manifest.get("extra") or {}).get("cuda")
    if manifest["target"].get("kind") != "cuda" or not info:
        raise ArtifactError(f"artifact {root}: not a tvm-cuda artifact with precompiled kernels")
    fatbins = {key: (root / fname).read_bytes() for key, fname in info["kernels"].items()}

    def _lookup(code, *_rest):
        key = source_key(str(code))
        if key not in fatbins:
            raise ArtifactError(f"artifact {root}: no precompiled kernel for CUDA source {key[:16]}")
        return bytearray(fatbins[key])

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", _lookup, override=True)
    dev = tvm.cuda(device_id)
    if not dev.exist:
        raise ArtifactError(f"no CUDA device {device_id} on this machine")
    lib = tvm.runtime.load_module(str(root / LIBRARY))
    vm = VirtualMachine(lib, dev)

    class _CudaRunner(Runner):
        def _call(self, arrays):
            return self._main(*[tvm.runtime.tensor(a, dev) for a in arrays])

        def benchmark(self, inputs, repeat: int = 20, warmup: int = 3) -> dict[str, float]:
            import time

            import numpy as np

            args = [tvm.runtime.tensor(a, dev) for a in self.check_inputs(inputs)]
            for _ in range(max(0, warmup)):
                self._main(*args)
            dev.sync()
            times = []
            for _ in range(max(1, repeat)):
                t0 = time.perf_counter()
                self._main(*args)
                dev.sync()
                times.append((time.perf_counter() - t0) * 1e3)
            return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)),
                    "min_ms": float(np.min(times)), "repeat": repeat}

    return _CudaRunner(root, manifest, vm)


def fatbin_archs(library: bytes) -> dict[str, list[str]]:
    """Scan a library's bytes for fatbin containers: ``{"elf": ["sm_80"], "ptx": ["sm_80"]}``.

    Fatbin layout: header (magic u32, version u16, header size u16, payload size u64), then entries
    (kind u16: 1 PTX, 2 ELF/cubin; version u16; header size u32; padded payload size u64;
    unknown u32; payload size u32; unknown u32 x2; sm version u32 ...).
    """
    import struct

    found: dict[str, set[str]] = {"elf": set(), "ptx": set()}
    pos = library.find(FATBIN_MAGIC)
    while pos >= 0:
        try:
            _, _, hsize, fsize = struct.unpack_from("<IHHQ", library, pos)
            entry, end = pos + hsize, pos + hsize + fsize
            while entry + 36 <= end:
                kind, _, ehsize, padded = struct.unpack_from("<HHIQ", library, entry)
                sm = struct.unpack_from("<I", library, entry + 28)[0]
                if kind in (1, 2) and ehsize >= 32:
                    found["ptx" if kind == 1 else "elf"].add(f"sm_{sm}")
                if ehsize == 0:
                    break
                entry += ehsize + padded
        except struct.error:
            pass
        pos = library.find(FATBIN_MAGIC, pos + 4)
    return {k: sorted(v) for k, v in found.items()}
