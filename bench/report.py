"""One HTML page of every benchmark result: `python bench/report.py` -> bench/results/report.html.

Reads the JSON files the bench scripts write into bench/results/ and draws, without any plotting
dependency (inline SVG), the figures people compare at a glance: conformance pass rates per path,
speed ratios against ONNX Runtime (below 1 = faster than ONNX Runtime), import/export cost, and
pass-manager scaling. Every other number found in the files is listed in a table underneath, so
nothing measured is hidden.
"""

from __future__ import annotations

import html
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def bars(title: str, items: list[tuple[str, float]], *, unit: str = "", ref: float | None = None) -> str:
    """A horizontal bar chart; `ref` draws a vertical line (e.g. 1.0 for ratio charts)."""
    if not items:
        return ""
    width, row, left = 640, 22, 220
    top = max([v for _, v in items] + ([ref] if ref else [])) or 1.0
    scale = (width - left - 60) / top
    h = row * len(items) + 30
    out = [f'<h3>{html.escape(title)}</h3><svg width="{width}" height="{h}" font-family="sans-serif" font-size="12">']
    for k, (label, v) in enumerate(items):
        y = 10 + k * row
        color = "#4a7" if ref is None or v <= ref else "#d84"
        out.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end">{html.escape(label)}</text>')
        out.append(f'<rect x="{left}" y="{y + 3}" width="{max(1.0, v * scale):.1f}" height="{row - 6}" fill="{color}"/>')
        out.append(f'<text x="{left + v * scale + 4:.1f}" y="{y + 14}">{v:.3g}{unit}</text>')
    if ref:
        x = left + ref * scale
        out.append(f'<line x1="{x:.1f}" y1="4" x2="{x:.1f}" y2="{h - 8}" stroke="#333" stroke-dasharray="4 3"/>')
    out.append("</svg>")
    return "\n".join(out)


def _load(name: str):
    p = RESULTS / name
    return json.loads(p.read_text()) if p.exists() else None


def _flat(obj, prefix: str = ""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flat(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _flat(v, f"{prefix}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield prefix, obj


def main() -> int:
    parts = ["<!doctype html><meta charset=utf-8><title>Lepton benchmarks</title>",
             "<style>body{font-family:sans-serif;max-width:980px;margin:2em auto}td{padding:2px 8px}"
             "table{border-collapse:collapse}tr:nth-child(even){background:#f4f4f4}</style>",
             "<h1>Lepton benchmark results</h1><p>Ratios are measured against ONNX Runtime in the same run; "
             "the dashed line is parity. Rerun the scripts under <code>bench/</code> to refresh.</p>"]
    conf = {p.stem.removeprefix("conformance-"): json.loads(p.read_text())
            for p in sorted(RESULTS.glob("conformance-*.json"))}
    if conf:
        parts.append(bars("ONNX node conformance: cases passed per path",
                          [(k, float(sum(1 for ok, _ in v.values() if ok))) for k, v in conf.items()]))
    io = _load("io.json")
    if io:
        rows = io.get("rows", [])
        parts.append(bars("Import + export time, lepton / onnx (goal <= 2)",
                          [(r.get("model", "?"), r.get("time_ratio", r.get("time_x", 0.0))) for r in rows], ref=2.0))
    passes = _load("passes.json")
    if passes:
        parts.append(bars("canonicalize: seconds per 10k nodes (flat = linear)",
                          [(f"{r['nodes']} nodes", r["seconds_per_10k_nodes"]) for r in passes["rows"]], unit=" s"))
    for name, title in (("fusion_latency.json", "Fusion latency ratios"), ("quant_speed.json", "int8 speed"),
                        ("tvm_speed.json", "TVM / ONNX Runtime latency")):
        data = _load(name)
        if data is None:
            continue
        ratios = [(k, v) for k, v in _flat(data) if any(t in k.lower() for t in ("ratio", "speedup", "_x"))
                  and 0 < v < 100]
        parts.append(bars(title, ratios[:40], ref=1.0))
    for p in sorted(RESULTS.glob("*.json")):
        if p.name.startswith("conformance-"):
            continue
        rows = list(_flat(json.loads(p.read_text())))
        parts.append(f"<details><summary>{html.escape(p.name)}: {len(rows)} numbers</summary><table>")
        parts += [f"<tr><td>{html.escape(k)}</td><td>{v:.6g}</td></tr>" for k, v in rows]
        parts.append("</table></details>")
    out = RESULTS / "report.html"
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
