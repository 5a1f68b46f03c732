"""The HTML report (lepton-opt --report, lepton.optimize(report=...)): built for three real models,
rendered in headless Chromium and checked pixel by pixel, plus the parts around it (labels and
accuracy, quant8's layers, stages of a partitioned artifact, an artifact this host cannot run,
failures that must stay warnings, the CLI).

Chromium: CI installs it (.ci/run) and these tests fail there without it; on a developer machine
without it (CI unset) the screenshot tests skip, saying why.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest

import lepton
from lepton.report import CHART_COLORS, ReportWarning, _feeds_from_arrays, render_html
from lepton_ir import LeptonError
from lepton_ir.testing import corpus

WIDTH, HEIGHT = 1200, 2000


# ------------------------------------------------------------------------------------------------
# Chromium and PNG
# ------------------------------------------------------------------------------------------------
def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not on PATH; .ci/run installs Debian's chromium (apt-get install -y chromium)")
        pytest.skip("chromium is not on PATH (apt-get install chromium); in CI (CI set) this test fails instead")
    return exe


def screenshot(html_path: Path, png_path: Path) -> Path:
    """`html_path` rendered by headless Chromium into a WIDTHxHEIGHT PNG (a fresh profile each time)."""
    exe = _chromium()
    with tempfile.TemporaryDirectory(prefix="lepton-chromium-") as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={profile}", f"--screenshot={png_path}",
               f"--window-size={WIDTH},{HEIGHT}", html_path.resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert png_path.is_file(), f"chromium wrote no screenshot: {proc.stderr[-2000:]}"
    return png_path


def read_png(path: Path) -> np.ndarray:
    """An 8-bit RGB/RGBA non-interlaced PNG (what Chromium writes) as an HxWx3 uint8 array."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    assert header is not None
    w, h, depth, ctype, _, _, interlace = header
    assert depth == 8 and ctype in (2, 6) and interlace == 0, header
    ch = 3 if ctype == 2 else 4
    raw = zlib.decompress(idat)
    stride = w * ch
    out = np.zeros((h, stride), np.uint8)
    prev = np.zeros(stride, np.int32)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int32)
        if f == 0:
            cur = line
        elif f == 2:
            cur = (line + prev) & 255
        else:  # 1 (sub), 3 (average), 4 (paeth): sequential along the row
            cur = np.zeros(stride, np.int32)
            for x in range(stride):
                a = cur[x - ch] if x >= ch else 0
                b = prev[x]
                c = prev[x - ch] if x >= ch else 0
                if f == 1:
                    pred = a
                elif f == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                cur[x] = (line[x] + pred) & 255
        out[y] = cur
        prev = cur
    return out.reshape(h, w, ch)[:, :, :3]


def test_png_reader_reads_what_it_should(tmp_path: Path) -> None:
    """The decoder against a PNG written here with every filter type, so the pixel checks below
    read what Chromium drew."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    rows = b""
    for y in range(5):
        f = y % 5
        line = img[y].reshape(-1).astype(np.int32)
        prev = img[y - 1].reshape(-1).astype(np.int32) if y else np.zeros_like(line)
        enc = np.zeros_like(line)
        for x in range(len(line)):
            a = line[x - 3] if x >= 3 else 0
            b = prev[x]
            c = prev[x - 3] if x >= 3 else 0
            p = a + b - c
            paeth = a if abs(p - a) <= abs(p - b) and abs(p - a) <= abs(p - c) else b if abs(p - b) <= abs(p - c) else c
            pred = [0, a, b, (a + b) // 2, paeth][f]
            enc[x] = (line[x] - pred) & 255
        rows += bytes([f]) + enc.astype(np.uint8).tobytes()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 7, 5, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    (tmp_path / "t.png").write_bytes(png)
    assert np.array_equal(read_png(tmp_path / "t.png"), img)


def _rgb(hex_color: str) -> np.ndarray:
    return np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)], np.int32)


def color_pixels(img: np.ndarray, hex_color: str, tol: int = 3) -> int:
    """Pixels within `tol` of the colour: where a chart's marks were painted."""
    return int(np.all(np.abs(img.astype(np.int32) - _rgb(hex_color)) <= tol, axis=-1).sum())


def svg_marks(page: str, chart_id: str, cls: str) -> list[float]:
    """The data-value of every mark of class `cls` inside the <svg id=chart_id>."""
    m = re.search(rf'<svg id="{chart_id}"[^>]*>(.*?)</svg>', page, re.S)
    assert m, f"no <svg id={chart_id}> in the page"
    return [float(v) for v in re.findall(rf'class="{cls}" data-value="([^"]+)"', m.group(1))]


def check_self_contained(page: str) -> None:
    """No resource outside the page: no src/href other than in-page anchors and data: URIs, no url()."""
    refs = re.findall(r'\b(?:src|href)\s*=\s*["\']?([^"\'\s>]+)', page)
    assert all(r.startswith(("#", "data:")) for r in refs), refs
    assert "url(" not in page and "<link" not in page and "<script" not in page and "@import" not in page


# ------------------------------------------------------------------------------------------------
# Three real models
# ------------------------------------------------------------------------------------------------
def _npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)
    return path


REAL = {
    # name: (passes, backend, batch of realistic inputs, charts expected)
    "magika": ("fuse", "onnx", 4, ("chart-latency", "chart-passes", "chart-stages")),
    "ppocr-cls": ("fuse,quant8{calib=CALIB}", "onnx", 4, ("chart-latency", "chart-passes", "chart-stages", "chart-sqnr")),
    "minilm-l3": ("fuse", "onnx", 4, ("chart-latency", "chart-passes", "chart-stages")),
}


@pytest.fixture(scope="module")
def real_reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, lepton.OptimizeResult]]:
    out: dict[str, tuple[Path, lepton.OptimizeResult]] = {}
    for name, (passes, backend, batch, _) in REAL.items():
        try:
            path = corpus.real_model_path(name)
        except corpus.ModelNotFetchedError as e:
            pytest.fail(str(e))  # .ci/run fetches the corpus; a test that silently skipped would prove nothing
        d = tmp_path_factory.mktemp(f"report-{name}")
        data = _npz(d / "data.npz", corpus.realistic_inputs(name, batch=batch, seed=1))
        if "CALIB" in passes:
            calib = _npz(d / "calib.npz", corpus.realistic_inputs(name, batch=8, seed=2))
            passes = passes.replace("CALIB", str(calib))
        with warnings.catch_warnings():
            warnings.simplefilter("error", ReportWarning)  # every part of the report must be there
            os.environ["LEPTON_NO_PROGRESS"] = "1"
            result = lepton.optimize(str(path), passes=passes, backend=backend, output=d / "out",
                                     report=d / "report.html", report_data=data)
        assert result.report_file == d / "report.html"
        out[name] = (d / "report.html", result)
    return out


@pytest.mark.parametrize("name", list(REAL))
def test_real_model_report_page(name: str, real_reports) -> None:
    html_path, result = real_reports[name]
    page = html_path.read_text()
    check_self_contained(page)
    passes, backend, batch, charts = REAL[name]
    # The summary: measured here, on this CPU, with the given inputs.
    assert "measured on " in page and f"{batch} sample(s) from the given data" in page
    assert "ONNX Runtime on the original" in page and "largest deviation" in page
    # Pass table: one row per pass run (the onnx backend's lowering included), each with its numbers.
    n_runs = len(result.report.records)
    assert svg_marks(page, "chart-passes", "bar") == [float(r.nodes_after) for r in result.report.records]
    assert page.count("<tr><td><code>") >= n_runs
    fuse_row = re.search(r"<tr><td><code>fuse</code></td><td>yes</td><td class=n>(\d+) &rarr; (\d+)</td><td>([^<]*)</td>", page)
    assert fuse_row, "no row for fuse (changed) in the pass table"
    before, after = int(fuse_row.group(1)), int(fuse_row.group(2))
    deltas = [int(sign.replace("&minus;", "-") + num) for sign, num in re.findall(r"(\+|&minus;)(\d+) ", fuse_row.group(3))]
    assert after < before and deltas and sum(deltas) == after - before  # the histogram change adds up
    # Latency: both sides measured, bars for both.
    lat = svg_marks(page, "chart-latency", "bar")
    assert len(lat) == 2 and all(v > 0 for v in lat)
    # Deviation from ONNX Runtime: small for fuse (exact rewrites), present for int8.
    dev = [float(x) for x in re.findall(r"<tr><td><code>[^<]*</code></td><td class=n>([-\d.e+inf]+)</td>", page.split(
        "Output deviation from ONNX Runtime")[1].split("</table>")[0])]
    assert dev, "no deviation rows"
    if "quant8" not in passes:
        assert max(dev) < 1e-2, dev
    # Stages: one host stage on onnx.
    assert len(svg_marks(page, "chart-stages", "bar")) == 1
    if "chart-sqnr" in charts:
        pts = svg_marks(page, "chart-sqnr", "pt")
        assert len(pts) >= 10 and all(v > 0 for v in pts), pts  # quantized activations with a finite, positive SQNR
    else:
        assert 'id="chart-sqnr"' not in page


@pytest.mark.parametrize("name", list(REAL))
def test_real_model_report_screenshot(name: str, real_reports, tmp_path: Path) -> None:
    html_path, _ = real_reports[name]
    png = screenshot(html_path, tmp_path / f"{name}.png")
    img = read_png(png)
    assert img.shape == (HEIGHT, WIDTH, 3)
    white = np.all(img >= 250, axis=-1)
    assert 0.02 < 1 - white.mean() < 0.6, f"{1 - white.mean():.3f} of the page is not background"
    # Every chart on the page was painted: its marks' colour covers a bar's worth of pixels.
    charts = REAL[name][3]
    wanted = {"chart-latency": ("latency-original", "latency-artifact"), "chart-passes": ("passes-changed",),
              "chart-stages": ("stage-onnx",), "chart-sqnr": ("sqnr",)}
    for chart in charts:
        for key in wanted[chart]:
            n = color_pixels(img, CHART_COLORS[key])
            assert n >= 150, f"{chart}: only {n} pixels of {key} {CHART_COLORS[key]} in the screenshot"
    if "chart-sqnr" not in charts:
        assert color_pixels(img, CHART_COLORS["sqnr"]) == 0
    if os.environ.get("LEPTON_KEEP_SCREENSHOTS"):  # to look at them: LEPTON_KEEP_SCREENSHOTS=folder
        shutil.copy(png, Path(os.environ["LEPTON_KEEP_SCREENSHOTS"]) / png.name)


def test_screenshot_check_fails_on_a_page_without_charts(tmp_path: Path) -> None:
    """The pixel check is not vacuous: a page with the same text but its charts removed fails it."""
    page = render_html({"title": "x.onnx", "pipeline": "fuse", "backend": "onnx", "target": None, "artifact": None,
                        "host": {"cpu": "cpu", "cores": 2, "machine": "x86_64"}, "created": "now", "compile_seconds": 1.0,
                        "nodes_before": 5, "nodes_after": 3, "passes": [], "size": {}, "problems": [],
                        "latency": {"original": {"median_ms": 1.0, "p90_ms": 1.0, "runs": 10},
                                    "artifact": {"median_ms": 0.5, "p90_ms": 0.5, "runs": 10}}, "speedup": 2.0,
                        "deviation": None, "accuracy": None, "stages": None, "quant": None})
    with_chart = tmp_path / "with.html"
    with_chart.write_text(page)
    without = tmp_path / "without.html"
    without.write_text(re.sub(r'<svg id="chart-latency".*?</svg>', "", page, flags=re.S))
    img_with = read_png(screenshot(with_chart, tmp_path / "with.png"))
    img_without = read_png(screenshot(without, tmp_path / "without.png"))
    assert color_pixels(img_with, CHART_COLORS["latency-artifact"]) >= 150
    assert color_pixels(img_without, CHART_COLORS["latency-artifact"]) == 0


# ------------------------------------------------------------------------------------------------
# Labels and accuracy, stages, a remote artifact, failures
# ------------------------------------------------------------------------------------------------
def test_digits_accuracy_with_labels(tmp_path: Path) -> None:
    """The shipped labelled digits test set: the report's accuracy of the float model is the
    recorded test accuracy (99.17%), counted here independently from ONNX Runtime's outputs."""
    from lepton_ir.reference import run_ort

    model = corpus.digits_model_path()
    data = Path(lepton.__file__).parent / "data" / "digits_test.npz"
    with np.load(data) as z:
        X, y = z["image"], z["labels"]
    # The shipped file is the corpus's test split (scikit-learn's digits), not some other data.
    Xc, yc = corpus.digits_dataset("test")
    assert np.array_equal(X, Xc) and np.array_equal(y, yc)
    result = lepton.optimize(str(model), passes="fuse", output=tmp_path / "out", report=tmp_path / "r.html",
                             report_data=data)
    page = (tmp_path / "r.html").read_text()
    logits = run_ort(str(model), {"image": X})[0]
    acc = float(np.mean(np.argmax(logits, 1) == y))
    assert abs(acc - corpus.digits_info()["test_accuracy"]) < 1e-9
    assert f"original {acc * 100:.2f}% &rarr; artifact {acc * 100:.2f}%" in page
    assert "360 labelled samples" in page
    assert f"top-1 accuracy {acc * 100:.2f}% -> {acc * 100:.2f}% on 360 labelled samples" in result.report_summary


def test_feeds_from_arrays_sample_axes() -> None:
    dims = {"input": [None, None], "state": [2, None, 128], "sr": []}
    arrays = {"input": np.zeros((3, 576), np.float32), "state": np.zeros((2, 1, 128), np.float32),
              "sr": np.array(16000)}
    feeds = _feeds_from_arrays(arrays, dims, 100)
    assert len(feeds) == 3
    assert feeds[0]["input"].shape == (1, 576) and feeds[2]["state"].shape == (2, 1, 128) and feeds[1]["sr"] == 16000
    stacked = _feeds_from_arrays({"x": np.zeros((4, 1, 3, 8, 8))}, {"x": ["n", 3, 8, 8]}, 100)
    assert len(stacked) == 4 and stacked[0]["x"].shape == (1, 3, 8, 8)
    with pytest.raises(LeptonError, match="no array for input"):
        _feeds_from_arrays({"input": arrays["input"]}, dims, 100)


def _det_model(path: Path) -> Path:
    from lepton_backends.tvm.testing import unsupported_op_chain

    onnx.save(unsupported_op_chain(), path)
    return path


def test_multistage_report_draws_the_stages(tmp_path: Path) -> None:
    """A model TVM compiles only in part: three stages (tvm-cpu, onnx, tvm-cpu), each drawn sized by
    its nodes and coloured by backend, with the fallback reason and measured border bytes."""
    pytest.importorskip("tvm")
    model = _det_model(tmp_path / "det.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback warning itself
        lepton.optimize(str(model), backend="tvm-cpu", output=tmp_path / "out", report=tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    check_self_contained(page)
    stages = json.loads((tmp_path / "out" / "manifest.json").read_text())["stages"]
    assert [s["backend"] for s in stages] == ["tvm-cpu", "onnx", "tvm-cpu"]
    assert svg_marks(page, "chart-stages", "bar") == [float(s["nodes"]) for s in stages]
    chart = re.search(r'<svg id="chart-stages".*?</svg>', page, re.S).group(0)
    fills = re.findall(r'class="bar" data-value="[^"]+" [^>]*fill="(#[0-9a-f]+)"', chart)
    assert fills == [CHART_COLORS["stage-tvm"], CHART_COLORS["stage-onnx"], CHART_COLORS["stage-tvm"]]
    assert "TVM cannot compile it" in page and "Det" in page
    table = page.split("<h2>Stage table</h2>")[1].split("</table>")[0]
    assert "?" not in re.sub(r"<[^>]+>", " ", table).replace("why on this backend", "")  # bytes measured
    img = read_png(screenshot(tmp_path / "r.html", tmp_path / "r.png"))
    assert color_pixels(img, CHART_COLORS["stage-tvm"]) >= 300 and color_pixels(img, CHART_COLORS["stage-onnx"]) >= 150


def test_remote_artifact_says_it_cannot_be_measured(tmp_path: Path) -> None:
    """tvm-arm: the artifact is for an aarch64 board; the page says latency and deviation are not
    measured here instead of inventing numbers, and still shows ONNX Runtime on the original."""
    pytest.importorskip("tvm")
    if shutil.which("aarch64-linux-gnu-gcc") is None and shutil.which("aarch64-linux-gnu-g++") is None:
        if os.environ.get("CI"):
            pytest.fail("no aarch64 cross compiler; .ci/run installs it (lepton-device install-host-deps)")
        pytest.skip("no aarch64 cross compiler (lepton-device install-host-deps)")
    result = lepton.optimize(str(corpus.digits_model_path()), passes="fuse", backend="tvm-arm", target="cortex-a72",
                             output=tmp_path / "out", report=tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "cannot run on this host" in page and "lepton-run " in page and "--rpc HOST:PORT" in page
    assert len(svg_marks(page, "chart-latency", "bar")) == 1  # ONNX Runtime only
    assert "Output deviation from ONNX Runtime" not in page
    assert "latency of the artifact not measured on this host" in result.report_summary


def test_report_failure_is_a_warning_and_the_compile_stands(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.warns(ReportWarning, match="report .* not written"):
        result = lepton.optimize(str(corpus.digits_model_path()), passes="fuse", output=tmp_path / "out",
                                 report=blocker / "r.html")  # its folder is a file
    assert result.report_file is None and result.artifact is not None
    assert lepton.load(tmp_path / "out").run({"image": np.zeros((1, 1, 8, 8), np.float32)})


def test_report_part_failure_is_noted_on_the_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lepton_passes.quant.report as qr

    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(qr, "quant_report", broken)
    with pytest.warns(ReportWarning, match="quant8 per-layer error: RuntimeError: boom"):
        result = lepton.optimize(str(corpus.digits_model_path()), passes="fuse,quant8", output=tmp_path / "out",
                                 report=tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "not in this report: quant8 per-layer error: RuntimeError: boom" in page
    assert 'id="chart-latency"' in page and result.report_file is not None


def test_report_without_an_artifact_and_for_an_onnx_file(tmp_path: Path) -> None:
    """No output: the optimized model (fused ops lowered) is what is timed and compared; -o x.onnx:
    that file. No part may be missing (warnings are errors here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReportWarning)
        none = lepton.optimize(str(corpus.digits_model_path()), passes="fuse", report=tmp_path / "a.html")
        onefile = lepton.optimize(str(corpus.digits_model_path()), passes="fuse", output=tmp_path / "m.onnx",
                                  report=tmp_path / "b.html")
    assert none.artifact is None and "not written" in (tmp_path / "a.html").read_text()
    assert "m.onnx in ONNX Runtime" in (tmp_path / "b.html").read_text()
    for r in (none, onefile):
        assert len(svg_marks(r.report_file.read_text(), "chart-latency", "bar")) == 2
        assert "max abs deviation from ONNX Runtime" in r.report_summary


def test_report_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure while writing leaves the previous report, and no temporary file."""
    import lepton.report as rep

    target = tmp_path / "r.html"
    target.write_text("previous")

    def fail(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rep.os, "fsync", fail)
    with pytest.raises(OSError):
        rep.write_report(target, "<html>new</html>")
    assert target.read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == ["r.html"]


# ------------------------------------------------------------------------------------------------
# The CLI
# ------------------------------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import sys; from lepton.cli import opt_main; sys.exit(opt_main())",
                           *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "LEPTON_NO_PROGRESS": "1"})


def test_cli_report(tmp_path: Path) -> None:
    data = Path(lepton.__file__).parent / "data"
    p = _cli(str(corpus.digits_model_path()), "--passes", f"fuse,quant8{{calib={data / 'digits_calib.npz'}}}",
             "-o", str(tmp_path / "out"), "--report", str(tmp_path / "r.html"), "--report-data",
             str(data / "digits_test.npz"))
    assert p.returncode == 0, p.stderr
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("wrote report")]
    assert line and "top-1 accuracy" in line[0] and "in ONNX Runtime" in line[0] and "size " in line[0], p.stdout
    page = (tmp_path / "r.html").read_text()
    assert 'id="chart-sqnr"' in page and "360 labelled samples" in page


@pytest.mark.parametrize("args, message", [
    (["--report-data", "x.npz"], "--report-data goes with --report"),
    (["--report", "{tmp}"], "is a folder"),
    (["--report", "{tmp}/r.html", "--report-data", "{tmp}/missing.npz"], "missing.npz: no such file"),
])
def test_cli_report_user_errors(tmp_path: Path, args: list[str], message: str) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    p = _cli(str(corpus.digits_model_path()), "-o", str(tmp_path / "out"), *args)
    assert p.returncode != 0
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lepton-opt: error:") and message in err[0], p.stderr
    assert not (tmp_path / "out").exists()


def test_readme_first_command(tmp_path: Path) -> None:
    """The README's first command (each step after `pip install -e .`, in a fresh folder) prints
    the gains the README quotes: sizes, latency against ONNX Runtime, accuracy on labelled files."""
    import shlex

    repo = Path(__file__).resolve().parents[1]
    block = re.search(r"```sh\n(.*?)```", (repo / "README.md").read_text(), re.S).group(1)
    chain = block.split("pip install -e . && ", 1)[1].split("\n\n", 1)[0].replace("\\\n", " ")
    steps = [shlex.split(step.replace("~/.cache/lepton/models/", f"{corpus.models_dir()}/"))
             for step in chain.split(" && ")]
    assert [st[:3] for st in steps[:2]] == [["python", "-m", "lepton_ir.testing.corpus"]] * 2
    env = {**os.environ, "LEPTON_NO_PROGRESS": "1"}
    for st in steps[:-1]:  # fetch (a cache hit here: .ci/run fetched) and the labelled data
        p = subprocess.run([sys.executable, *st[1:]], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
        assert p.returncode == 0, p.stderr
    argv = steps[-1]
    assert argv[0] == "lepton-opt" and "--report" in argv and "--report-data" in argv
    p = subprocess.run([sys.executable, "-c", "import sys; from lepton.cli import opt_main; sys.exit(opt_main())",
                        *argv[1:]], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    out = p.stdout.splitlines()
    assert re.match(r".*magika.onnx: 95 -> \d+ nodes, 3.0 MB -> [\d.]+ kB.* wrote out/magika$", out[0]), out
    assert re.match(r"wrote report out/magika.html: size 3.0 MB -> [\d.]+ kB; latency [\d.]+ ms in ONNX Runtime -> "
                    r"[\d.]+ ms \([\d.]+x (faster|slower)\); top-1 accuracy [\d.]+% -> [\d.]+% on 400 labelled samples; "
                    r"max abs deviation from ONNX Runtime [\d.e+-]+$", out[1]), out
    # the accuracy the README claims: within a point of the float model on the same files
    acc = [float(x) for x in re.findall(r"([\d.]+)%", out[1])]
    assert acc[0] - acc[1] <= 1.0, out[1]
    assert (tmp_path / "out" / "magika.html").is_file() and not (repo / "out" / "magika").exists()
    assert "lepton-opt: warning" not in p.stderr, p.stderr
