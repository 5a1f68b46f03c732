"""Named TVM target presets for the ``tvm-cpu`` / ``tvm-cuda`` backends.

A preset is a plain JSON-able dict in TVM 0.27's target syntax (``tvm.target.Target(dict)``), so
it can be written verbatim into an artifact's manifest and reproduced later.
"""

from __future__ import annotations

import copy
import json
from typing import Any

X86_TRIPLE = "x86_64-linux-gnu"
ARM_TRIPLE = "aarch64-linux-gnu"

# x86 presets name a concrete CPU so LLVM picks the right vector width and cost model.
# "haswell" is the oldest Intel core with AVX2+FMA; "skylake-avx512" the first with AVX-512F/BW/DQ/VL.
_X86_PRESETS: dict[str, dict[str, Any]] = {
    "x86-64-avx2": {"kind": "llvm", "mtriple": X86_TRIPLE, "mcpu": "haswell"},
    "x86-64-avx512": {"kind": "llvm", "mtriple": X86_TRIPLE, "mcpu": "skylake-avx512"},
}

# ARM presets: mcpu per LLVM's names; mattr lists the features the core has beyond armv8-a that
# TVM's arm_cpu strategies key on (dotprod -> int8 SDOT kernels, i8mm -> SMMLA, sve).
_ARM_PRESETS: dict[str, dict[str, Any]] = {
    # Armv8.0-A: NEON only.
    "cortex-a53": {"mcpu": "cortex-a53", "mattr": ["+neon"]},
    "cortex-a72": {"mcpu": "cortex-a72", "mattr": ["+neon"]},
    # Armv8.2-A cores with the dot-product extension and fp16 arithmetic.
    "cortex-a55": {"mcpu": "cortex-a55", "mattr": ["+neon", "+dotprod", "+fullfp16"]},
    "cortex-a76": {"mcpu": "cortex-a76", "mattr": ["+neon", "+dotprod", "+fullfp16"]},
    "neoverse-n1": {"mcpu": "neoverse-n1", "mattr": ["+neon", "+dotprod", "+fullfp16"]},
    # Armv8.4-A with SVE (256-bit), int8 matrix multiply and bf16.
    "neoverse-v1": {
        "mcpu": "neoverse-v1",
        "mattr": ["+neon", "+dotprod", "+fullfp16", "+i8mm", "+bf16", "+sve"],
    },
}

_CUDA_ARCHS = ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90")


def _arm(name: str) -> dict[str, Any]:
    spec = _ARM_PRESETS[name]
    return {"kind": "llvm", "mtriple": ARM_TRIPLE, "mcpu": spec["mcpu"], "mattr": list(spec["mattr"])}


def _cuda(arch: str) -> dict[str, Any]:
    # The host part compiles the Relax VM glue; a generic x86-64 host keeps the .so portable.
    return {"kind": "cuda", "arch": arch, "host": {"kind": "llvm", "mtriple": X86_TRIPLE}}


def read_cpu_flags(cpuinfo_path: str = "/proc/cpuinfo") -> set[str]:
    """Return the CPU feature flags of the first processor listed in ``cpuinfo_path``.

    Returns an empty set when the file is missing or has no ``flags`` line (non-Linux, ARM hosts
    list ``Features`` instead; those are read too).
    """
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    # Linux spells AVX-512 VNNI "avx512_vnni" (and AVX-VNNI "avx_vnni"); the
                    # checks below use LLVM's feature names, so both spellings are kept.
                    flags = set(value.split())
                    return flags | {f.replace("_", "") for f in flags if f.startswith(("avx512_", "avx_"))}
    except OSError:
        pass
    return set()


def native_target(cpuinfo_path: str = "/proc/cpuinfo", num_cores: int | None = None) -> dict[str, Any]:
    """Build a target dict for the machine this runs on, from its /proc/cpuinfo flags.

    The mcpu is the oldest LLVM CPU name having every detected vector feature, so the code runs
    on this host and on any newer one of the same family.
    """
    import platform

    flags = read_cpu_flags(cpuinfo_path)
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        mattr = ["+neon"]
        for flag, attr in (("asimddp", "+dotprod"), ("asimdhp", "+fullfp16"), ("i8mm", "+i8mm"), ("sve", "+sve")):
            if flag in flags:
                mattr.append(attr)
        target: dict[str, Any] = {"kind": "llvm", "mtriple": ARM_TRIPLE, "mcpu": "generic", "mattr": mattr}
    else:
        if {"avx512f", "avx512bw", "avx512vnni"} <= flags:
            mcpu = "cascadelake"  # first Intel core with AVX-512 VNNI (int8 dot products)
        elif {"avx512f", "avx512bw"} <= flags:
            mcpu = "skylake-avx512"
        elif {"avx2", "fma"} <= flags:
            mcpu = "haswell"
        else:
            mcpu = "x86-64"
        target = {"kind": "llvm", "mtriple": X86_TRIPLE, "mcpu": mcpu}
    if num_cores:
        target["num-cores"] = int(num_cores)
    return target


def preset_names() -> list[str]:
    """All preset names accepted by :func:`preset` / :func:`resolve_target`."""
    return sorted([*_X86_PRESETS, "native", *_ARM_PRESETS, *_CUDA_ARCHS])


def backend_presets(backend: str) -> list[str]:
    """The presets a backend compiles for: tvm-arm the aarch64 cores, tvm-cuda the CUDA archs,
    tvm-cpu this host and the x86 presets (it cross-compiles for the ARM presets too, but those
    are what tvm-arm is for)."""
    if backend == "tvm-arm":
        return sorted(_ARM_PRESETS)
    if backend == "tvm-cuda":
        return list(_CUDA_ARCHS)
    return ["native", *sorted(_X86_PRESETS)]


def is_arm_preset(name: str) -> bool:
    return name in _ARM_PRESETS


def preset(name: str) -> dict[str, Any]:
    """Return a fresh copy of the target dict for preset ``name``.

    Raises:
        ValueError: ``name`` is not a preset; the message lists the presets.
    """
    if name in _X86_PRESETS:
        return copy.deepcopy(_X86_PRESETS[name])
    if name == "native":
        return native_target()
    if name in _ARM_PRESETS:
        return _arm(name)
    if name in _CUDA_ARCHS:
        return _cuda(name)
    raise ValueError(f"unknown target preset {name!r}; presets: {', '.join(preset_names())}")


def target_dict(spec: str | dict[str, Any]) -> dict[str, Any]:
    """Normalise ``spec`` (preset name, JSON string or dict) to a target dict, without TVM."""
    if isinstance(spec, dict):
        return copy.deepcopy(spec)
    if not isinstance(spec, str):
        raise TypeError(f"target spec must be a preset name, JSON string or dict, not {type(spec).__name__}")
    text = spec.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"target spec is not valid JSON: {e}") from None
        if not isinstance(value, dict):
            raise ValueError("target JSON must be an object")
        return value
    return preset(text)


def resolve_target(spec: str | dict[str, Any]) -> "tvm.target.Target":  # noqa: F821
    """Turn a preset name, a JSON string or a target dict into a ``tvm.target.Target``.

    Raises:
        ValueError: unknown preset name (the message lists presets) or a target TVM rejects.
    """
    import tvm

    d = target_dict(spec)
    try:
        return tvm.target.Target(d)
    except Exception as e:  # TVM raises its own error types; surface one clear ValueError.
        raise ValueError(f"invalid TVM target {json.dumps(d)}: {str(e).strip().splitlines()[-1]}") from None


def is_cpu_target(target: "tvm.target.Target") -> bool:  # noqa: F821
    """True for LLVM (CPU) targets."""
    return target.kind.name == "llvm"


def is_cross_target(target: "tvm.target.Target") -> bool:  # noqa: F821
    """True when ``target`` produces code this host cannot run (other triple, or a GPU)."""
    import platform

    if target.kind.name != "llvm":
        return True
    triple = str(target.attrs.get("mtriple", "") or "")
    if not triple:
        return False
    host_arch = platform.machine().lower()
    return not triple.startswith(host_arch if host_arch != "arm64" else "aarch64")
