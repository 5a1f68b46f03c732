"""Figures of docs/distill.md: the torch lowering against ONNX Runtime on the real models (max
|difference|, train-step time), and recovery of the digits CNN by `distill` (perturbed weights,
pruned channels).

    python bench/distill_figures.py            # all sections, markdown on stdout
    python bench/distill_figures.py lowering   # one section (lowering | recovery | prune | minilm)

Needs torch (pip install lepton[train]) and the fetched real models
(python -m lepton_ir.testing.corpus fetch). Runs single-threaded (distill's default threads=1).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "distill"))

import lepton_ir  # noqa: E402
from lepton_ir.reference import run_ort  # noqa: E402
from lepton_ir.testing import corpus  # noqa: E402
from lepton_passes import PassManager, get_pass  # noqa: E402

os.environ.setdefault("LEPTON_NO_PROGRESS", "1")


def _acc(model, X, y) -> float:
    return float((run_ort(lepton_ir.to_onnx(model), {"image": X})[0].argmax(1) == y).mean())


def lowering() -> None:
    import torch

    from lepton_passes.distill.torch_lowering import TorchModule

    torch.set_num_threads(1)
    print("| model | nodes | parameters (tensors / elements) | max abs diff vs ORT | forward+backward, batch 1 | batch 8 |")
    print("|---|---|---|---|---|---|")
    for name in ("digits", "magika", "minilm-l3"):
        if name == "digits":
            path = corpus.digits_model_path()
            X = corpus.digits_dataset("test")[0]
            feeds, f8 = {"image": X[:1]}, {"image": X[:8]}
        else:
            path = corpus.real_model_path(name)
            feeds, f8 = corpus.realistic_inputs(name), corpus.realistic_inputs(name, batch=8)
        model = lepton_ir.load(path)
        mod = TorchModule(model)
        ref = run_ort(lepton_ir.to_onnx(model), feeds)
        with torch.no_grad():
            got = [t.numpy() for t in mod.outputs(feeds)]
        diff = max(float(np.max(np.abs(np.asarray(r, np.float64) - g))) for r, g in zip(ref, got)
                   if np.asarray(r).dtype.kind == "f")

        def step(f) -> float:
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                out = mod.outputs(f)
                loss = sum(o.float().sum() for o in out if o.dtype.is_floating_point)
                loss.backward()
                best = min(best, time.perf_counter() - t0)
            return best * 1e3

        n_el = sum(p.numel() for p in mod.parameters())
        print(f"| {name} | {len(model.graph)} | {len(mod.params)} / {n_el:,} | {diff:.2g} | {step(feeds):.1f} ms "
              f"| {step(f8):.1f} ms |")


def recovery() -> None:
    from distill_helpers import NOISE, perturb

    X, y = corpus.digits_dataset("test")
    Xtr, ytr = corpus.digits_dataset("train")
    with tempfile.TemporaryDirectory() as d:
        np.savez(Path(d) / "lab.npz", image=Xtr, labels=ytr)
        np.savez(Path(d) / "nolab.npz", image=Xtr)
        orig = lepton_ir.load(corpus.digits_model_path())
        print(f"digits CNN: original test accuracy {_acc(orig, X, y):.3f}; conv2 weight + {NOISE} sd noise")
        print()
        print("| data | epochs | perturbed | distilled | seconds |")
        print("|---|---|---|---|---|")
        for data, label in (("nolab.npz", "train split, no labels (KD + features)"),
                            ("lab.npz", "train split with labels (+ cross-entropy)")):
            for epochs in (2, 5, 10):
                m = lepton_ir.load(corpus.digits_model_path())
                perturb(m)
                before = _acc(m, X, y)
                t0 = time.perf_counter()
                get_pass("distill")(teacher=str(corpus.digits_model_path()), calib=str(Path(d) / data),
                                    epochs=epochs).run(m)
                print(f"| {label} | {epochs} | {before:.3f} | {_acc(m, X, y):.3f} | {time.perf_counter() - t0:.1f} |")


def prune() -> None:
    X, y = corpus.digits_dataset("test")
    Xtr, _ = corpus.digits_dataset("train")
    teacher = str(corpus.digits_model_path())
    with tempfile.TemporaryDirectory() as d:
        data = str(Path(d) / "train.npz")
        np.savez(data, image=Xtr)
        print("| pipeline | test accuracy | seconds |")
        print("|---|---|---|")
        for pipe in ("prune{ratio=0.5,multiple=1}",
                     f'prune{{ratio=0.5,multiple=1}},distill{{calib="{data}",epochs=5}}',
                     f'prune{{ratio=0.5,multiple=1}},reconstruct{{calib="{data}"}}',
                     f'prune{{ratio=0.5,multiple=1}},reconstruct{{calib="{data}"}},distill{{teacher="{teacher}",'
                     f'calib="{data}",epochs=5}}'):
            m = lepton_ir.load(teacher)
            t0 = time.perf_counter()
            PassManager(pipe).run(m)
            shown = pipe.replace(data, "train.npz").replace(teacher, "digits_cnn.onnx")
            print(f"| `{shown}` | {_acc(m, X, y):.3f} | {time.perf_counter() - t0:.1f} |")


def minilm() -> None:
    """MiniLM-L3 with noise on one attention MatMul weight, distilled from the original (MSE on its
    float outputs, feature MSE at the shared LayerNorm/Softmax/residual outputs) on 64 realistic
    inputs; error of the sentence embedding on 16 other inputs."""
    name = "minilm-l3"
    path = corpus.real_model_path(name)
    test = corpus.realistic_inputs(name, batch=16, seed=5)
    ref = run_ort(str(path), test)
    with tempfile.TemporaryDirectory() as d:
        data = str(Path(d) / "train.npz")
        np.savez(data, **corpus.realistic_inputs(name, batch=64, seed=0))
        m = lepton_ir.load(path)
        mm = [n for n in m.graph if n.op_type == "MatMul" and n.inputs[1].const is not None][3]
        W = mm.inputs[1].const.numpy()
        noise = np.random.default_rng(0).standard_normal(W.shape).astype(np.float32)
        lepton_ir.replace_constants(m, {mm.inputs[1]: W + 0.5 * W.std() * noise})

        def err(model) -> float:
            out = run_ort(lepton_ir.to_onnx(model), test)
            return float(np.abs(out[3] - ref[3]).mean())

        before = err(m)
        t0 = time.perf_counter()
        get_pass("distill")(teacher=str(path), calib=data, epochs=3, output_loss="mse", lr=1e-4, batch=8).run(m)
        print("| MiniLM-L3, one MatMul weight + 0.5 sd noise | mean abs error of the embedding (16 held-out inputs) |")
        print("|---|---|")
        print(f"| perturbed | {before:.4f} |")
        print(f"| `distill{{output-loss=mse,lr=1e-4,batch=8,epochs=3}}` on 64 inputs ({time.perf_counter() - t0:.0f} s) "
              f"| {err(m):.4f} |")


if __name__ == "__main__":
    sections = sys.argv[1:] or ["lowering", "recovery", "prune", "minilm"]
    for s in sections:
        print(f"\n### {s}\n")
        {"lowering": lowering, "recovery": recovery, "prune": prune, "minilm": minilm}[s]()
