"""Train the small digits CNN that Lepton ships as ``lepton/data/digits_cnn.onnx``.

A real trained model lets accuracy numbers (quantization, fusion, backends) mean something.
Everything is plain numpy: hand-written forward/backward, Adam, fixed seeds, and the split of
:func:`lepton_ir.testing.corpus.digits_dataset` (so tests evaluate on exactly the held-out set).

Network (opset 17)::

    image [N,1,8,8] -> Conv 3x3 8ch (pad 1) -> BatchNormalization -> Relu
      -> Conv 3x3 16ch (pad 1) -> Relu -> MaxPool 2x2 -> Flatten -> Gemm 256x10 -> logits [N,10]

The BatchNormalization is kept as a separate node on purpose: Conv+BN folding needs a target.

Run from the repository root (needs scikit-learn for the dataset)::

    python bench/train_digits.py            # writes lepton/data/digits_cnn.{onnx,json}
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import sys
import time

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from a checkout
from lepton_ir.testing.corpus import (  # noqa: E402
    DIGITS_N_CALIB,
    DIGITS_N_TEST,
    DIGITS_SPLIT_SEED,
    digits_dataset,
)

INIT_SEED = 0
EPOCHS = 40
BATCH = 32
LR = 2e-3
BN_EPS = 1e-5
BN_MOMENTUM = 0.1  # running = (1 - m) * running + m * batch, as in PyTorch
OPSET = 17
IR_VERSION = 8  # the IR of opset 17's release; older readers (TVM's importer) accept it


# ---------------------------------------------------------------- layers (forward + backward)


def im2col(x: np.ndarray) -> np.ndarray:
    """[N,C,H,W] -> [N*H*W, C*9] patches of a 3x3, pad-1, stride-1 convolution."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = sliding_window_view(xp, (3, 3), axis=(2, 3))  # [N,C,H,W,3,3]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(n * h * w, c * 9)


def col2im(dcols: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Adjoint of :func:`im2col`: scatter-add patch gradients back to [N,C,H,W]."""
    n, c, h, w = shape
    d = dcols.reshape(n, h, w, c, 3, 3)
    dxp = np.zeros((n, c, h + 2, w + 2), dcols.dtype)
    for i in range(3):
        for j in range(3):
            dxp[:, :, i : i + h, j : j + w] += d[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return dxp[:, :, 1:-1, 1:-1]


def conv_fwd(x, w, b):
    n, _, h, wd = x.shape
    cols = im2col(x)
    out = cols @ w.reshape(w.shape[0], -1).T + b
    return out.reshape(n, h, wd, -1).transpose(0, 3, 1, 2), cols


def conv_bwd(dout, cols, x_shape, w):
    o = w.shape[0]
    d = dout.transpose(0, 2, 3, 1).reshape(-1, o)
    dw = (d.T @ cols).reshape(w.shape)
    db = d.sum(0)
    dx = col2im(d @ w.reshape(o, -1), x_shape)
    return dx, dw, db


def bn_train_fwd(x, gamma, beta):
    mu = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3))
    xhat = (x - mu[None, :, None, None]) / np.sqrt(var + BN_EPS)[None, :, None, None]
    return gamma[None, :, None, None] * xhat + beta[None, :, None, None], (xhat, var, mu)


def bn_bwd(dout, cache, gamma):
    xhat, var, _ = cache
    m = dout.shape[0] * dout.shape[2] * dout.shape[3]
    dgamma = (dout * xhat).sum(axis=(0, 2, 3))
    dbeta = dout.sum(axis=(0, 2, 3))
    dxhat = dout * gamma[None, :, None, None]
    inv = 1.0 / np.sqrt(var + BN_EPS)[None, :, None, None]
    dx = inv / m * (m * dxhat - dxhat.sum(axis=(0, 2, 3), keepdims=True)
                    - xhat * (dxhat * xhat).sum(axis=(0, 2, 3), keepdims=True))
    return dx, dgamma, dbeta


def maxpool_fwd(x):
    n, c, h, w = x.shape
    r = x.reshape(n, c, h // 2, 2, w // 2, 2)
    out = r.max(axis=(3, 5))
    mask = r == out[:, :, :, None, :, None]
    # Ties (e.g. all-zero windows after Relu) would double-count; keep only the first max.
    first = np.cumsum(mask.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5)
                      .reshape(n, c, h // 2, w // 2, 4), axis=-1) == 1
    flat_mask = mask.transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4) & first
    return out, flat_mask


def maxpool_bwd(dout, flat_mask, shape):
    n, c, h, w = shape
    d = flat_mask * dout[..., None]  # [N,C,H/2,W/2,4]
    return d.reshape(n, c, h // 2, w // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(shape)


# ---------------------------------------------------------------- model


def init_params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    def he(shape, fan_in):
        return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)

    return {
        "conv1.weight": he((8, 1, 3, 3), 9), "conv1.bias": np.zeros(8),
        "bn1.weight": np.ones(8), "bn1.bias": np.zeros(8),
        "conv2.weight": he((16, 8, 3, 3), 72), "conv2.bias": np.zeros(16),
        "fc.weight": he((10, 256), 256) * 0.5, "fc.bias": np.zeros(10),
    }


def forward_train(p, x):
    c1, cols1 = conv_fwd(x, p["conv1.weight"], p["conv1.bias"])
    b1, bn_cache = bn_train_fwd(c1, p["bn1.weight"], p["bn1.bias"])
    r1 = np.maximum(b1, 0)
    c2, cols2 = conv_fwd(r1, p["conv2.weight"], p["conv2.bias"])
    r2 = np.maximum(c2, 0)
    pooled, pmask = maxpool_fwd(r2)
    flat = pooled.reshape(len(x), -1)
    logits = flat @ p["fc.weight"].T + p["fc.bias"]
    return logits, (x, cols1, c1, bn_cache, b1, r1, cols2, c2, r2, pmask, flat)


def backward(p, dlogits, cache):
    x, cols1, c1, bn_cache, b1, r1, cols2, c2, r2, pmask, flat = cache
    g = {"fc.weight": dlogits.T @ flat, "fc.bias": dlogits.sum(0)}
    dpooled = (dlogits @ p["fc.weight"]).reshape(len(x), 16, 4, 4)
    dr2 = maxpool_bwd(dpooled, pmask, r2.shape)
    dc2 = dr2 * (c2 > 0)
    dr1, g["conv2.weight"], g["conv2.bias"] = conv_bwd(dc2, cols2, r1.shape, p["conv2.weight"])
    db1 = dr1 * (b1 > 0)
    dc1, g["bn1.weight"], g["bn1.bias"] = bn_bwd(db1, bn_cache, p["bn1.weight"])
    _, g["conv1.weight"], g["conv1.bias"] = conv_bwd(dc1, cols1, x.shape, p["conv1.weight"])
    return g


def forward_eval(p, stats, x):
    """Inference forward with running BN statistics, in the dtype of ``p`` (float32 for export)."""
    c1, _ = conv_fwd(x, p["conv1.weight"], p["conv1.bias"])
    scale = p["bn1.weight"] / np.sqrt(stats["bn1.running_var"] + np.asarray(BN_EPS, c1.dtype))
    b1 = (c1 - stats["bn1.running_mean"][None, :, None, None]) * scale[None, :, None, None] \
        + p["bn1.bias"][None, :, None, None]
    r1 = np.maximum(b1, 0)
    c2, _ = conv_fwd(r1, p["conv2.weight"], p["conv2.bias"])
    pooled, _ = maxpool_fwd(np.maximum(c2, 0))
    return pooled.reshape(len(x), -1) @ p["fc.weight"].T + p["fc.bias"]


def train(x_train, y_train, epochs=EPOCHS, log=print):
    rng = np.random.default_rng(INIT_SEED)
    p = init_params(rng)
    stats = {"bn1.running_mean": np.zeros(8), "bn1.running_var": np.ones(8)}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(val) for k, val in p.items()}
    b1, b2, eps, step = 0.9, 0.999, 1e-8, 0
    x_train = x_train.astype(np.float64)
    for epoch in range(epochs):
        lr = LR * 0.5 * (1 + np.cos(np.pi * epoch / epochs))  # cosine decay: stable final epochs
        order = rng.permutation(len(x_train))
        total = 0.0
        for s in range(0, len(order), BATCH):
            idx = order[s : s + BATCH]
            if len(idx) < 2:  # BN batch statistics need more than one sample
                continue
            logits, cache = forward_train(p, x_train[idx])
            z = logits - logits.max(1, keepdims=True)
            prob = np.exp(z) / np.exp(z).sum(1, keepdims=True)
            total += -np.log(prob[np.arange(len(idx)), y_train[idx]] + 1e-12).sum()
            dlogits = prob
            dlogits[np.arange(len(idx)), y_train[idx]] -= 1
            grads = backward(p, dlogits / len(idx), cache)
            _, var, mu = cache[3]
            n_el = len(idx) * 64
            stats["bn1.running_mean"] = (1 - BN_MOMENTUM) * stats["bn1.running_mean"] + BN_MOMENTUM * mu
            stats["bn1.running_var"] = (1 - BN_MOMENTUM) * stats["bn1.running_var"] \
                + BN_MOMENTUM * var * n_el / (n_el - 1)
            step += 1
            for k in p:
                m[k] = b1 * m[k] + (1 - b1) * grads[k]
                v[k] = b2 * v[k] + (1 - b2) * grads[k] ** 2
                p[k] -= lr * (m[k] / (1 - b1**step)) / (np.sqrt(v[k] / (1 - b2**step)) + eps)
        if epoch % 10 == 9 or epoch == epochs - 1:
            log(f"epoch {epoch + 1:3d}  loss {total / len(x_train):.4f}")
    return p, stats


# ---------------------------------------------------------------- export


def export(p32, stats32, path: pathlib.Path, doc: str, meta: dict[str, str]) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(a, name) for name, a in {**p32, **stats32}.items()]
    nodes = [
        helper.make_node("Conv", ["image", "conv1.weight", "conv1.bias"], ["conv1"], name="conv1",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization",
                         ["conv1", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"],
                         ["bn1"], name="bn1", epsilon=BN_EPS),
        helper.make_node("Relu", ["bn1"], ["relu1"], name="relu1"),
        helper.make_node("Conv", ["relu1", "conv2.weight", "conv2.bias"], ["conv2"], name="conv2",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2"),
        helper.make_node("MaxPool", ["relu2"], ["pool"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "digits_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="lepton bench/train_digits.py", producer_version="1",
                              doc_string=doc)
    model.ir_version = IR_VERSION
    for k, val in meta.items():
        model.metadata_props.add(key=k, value=val)
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = pathlib.Path(__file__).resolve().parents[1]
    ap.add_argument("--out", default=str(root / "lepton" / "data" / "digits_cnn.onnx"))
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    args = ap.parse_args()
    out = pathlib.Path(args.out)

    t0 = time.perf_counter()
    x_tr, y_tr = digits_dataset("train")
    x_te, y_te = digits_dataset("test")
    p, stats = train(x_tr, y_tr, epochs=args.epochs)
    train_s = time.perf_counter() - t0

    # Evaluate exactly what gets exported: float32 parameters, float32 inference arithmetic.
    p32 = {k: v.astype(np.float32) for k, v in p.items()}
    s32 = {k: v.astype(np.float32) for k, v in stats.items()}
    np_pred_te = forward_eval(p32, s32, x_te).argmax(1)
    np_pred_tr = forward_eval(p32, s32, x_tr).argmax(1)
    acc_te = float((np_pred_te == y_te).mean())
    acc_tr = float((np_pred_tr == y_tr).mean())
    print(f"numpy float32: train accuracy {acc_tr:.4f}, test accuracy {acc_te:.4f} ({train_s:.1f} s)")

    recipe = (f"Conv3x3x8+BN+Relu, Conv3x3x16+Relu, MaxPool2, Gemm256x10; numpy Adam lr {LR} cosine, "
              f"batch {BATCH}, {args.epochs} epochs, init seed {INIT_SEED}; sklearn digits /16, "
              f"split seed {DIGITS_SPLIT_SEED} ({DIGITS_N_TEST} test)")
    export(p32, s32, out, doc=f"Digits CNN trained by bench/train_digits.py: {recipe}",
           meta={"test_accuracy": f"{acc_te:.6f}", "split_seed": str(DIGITS_SPLIT_SEED)})

    from lepton_ir.reference import ort_session

    sess = ort_session(out, optimize=True)
    ort_pred = sess.run(None, {"image": x_te})[0].argmax(1)
    ort_acc = float((ort_pred == y_te).mean())
    n_diff = int((ort_pred != np_pred_te).sum())
    print(f"onnxruntime: test accuracy {ort_acc:.4f}; predictions differing from numpy: {n_diff}")
    if ort_acc != acc_te or n_diff:
        print("error: ONNX Runtime does not reproduce the numpy accuracy", file=sys.stderr)
        return 1

    info = {
        "model": out.name,
        "test_accuracy": acc_te,
        "train_accuracy": acc_tr,
        "ort_test_accuracy": ort_acc,
        "n_test": int(len(y_te)),
        "n_train": int(len(y_tr)),
        "n_calib": DIGITS_N_CALIB,
        "split_seed": DIGITS_SPLIT_SEED,
        "split": "numpy.random.default_rng(split_seed).permutation(1797): first n_test are test, "
                 "the rest train; calib = first n_calib of train "
                 "(lepton_ir.testing.corpus.digits_dataset)",
        "scaling": "pixels / 16.0 -> [0, 1], float32, shape [N,1,8,8]",
        "architecture": "Conv(1->8,3x3,pad1) BatchNormalization Relu Conv(8->16,3x3,pad1) Relu "
                        "MaxPool(2x2) Flatten Gemm(256->10)",
        "training": {"optimizer": "Adam (beta 0.9/0.999), cosine lr decay", "lr": LR, "batch": BATCH,
                     "epochs": args.epochs, "init_seed": INIT_SEED, "bn_momentum": BN_MOMENTUM,
                     "implementation": "plain numpy, hand-written forward/backward",
                     "seconds": round(train_s, 1)},
        "opset": OPSET,
        "ir_version": IR_VERSION,
        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "made_with": {"numpy": np.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                      "command": "python bench/train_digits.py"},
    }
    out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
