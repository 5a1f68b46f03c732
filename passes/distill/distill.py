"""`distill`: recover accuracy by knowledge distillation from a teacher (CPU training with PyTorch).

The student is the current model (e.g. after `prune`); the teacher is the model as it was before
the pipeline's lossy passes (see `teacher_source`). The student is lowered into a torch module
(`torch_lowering.TorchModule`: weights are parameters, everything else buffers), trained on the
`calib=` data against the teacher's outputs, which ONNX Runtime computes once, and the best
weights (lowest validation loss; the original ones count as a candidate) are written back into
the IR with `lepton_ir.replace_constants`.

Loss, per batch (docs/distill.md):
* KD: T^2 * KL(softmax(teacher / T) || softmax(student / T)) over the last axis of every float
  graph output the two models share (by name, else by position) - `output-loss=mse` uses the MSE
  instead (for outputs that are not logits, e.g. embeddings);
* features: mean over matched values of MSE(student, teacher) / mean(teacher^2), at the "block
  outputs" the two models share - values of the same name, producer op and shape (activations,
  normalizations, pools, residual Adds, Concats; `features=all`: every shared float value);
* labels: cross-entropy of the first output when the data carries a `labels` array.

Torch is imported only when the pass trains: the pass registers (and `--list-passes` works)
without it, and running it without torch is a one-line PassError naming `pip install lepton[train]`.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lepton_ir import DType, Model, Value

from ..base import Pass, PassError, PassInputError, register_pass

INSTALL_HINT = "pip install lepton[train]"
#: Where `prune` keeps the unpruned model (an ONNX ModelProto) in `model.graph.meta`
#: (lepton_passes.prune.prune.ORIGINAL_KEY; read by name so distill does not import prune).
PRUNE_ORIGINAL_KEY = "lepton.prune.original"

#: Producers whose outputs count as "block outputs" for the feature loss (features=auto).
BLOCK_OPS = ("Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Clip", "Gelu", "Elu", "Selu",
             "PRelu", "BatchNormalization", "LayerNormalization", "InstanceNormalization", "MaxPool", "AveragePool",
             "GlobalAveragePool", "GlobalMaxPool", "Concat", "Add", "Softmax")
_FLOAT = (DType.FLOAT, DType.DOUBLE, DType.FLOAT16, DType.BFLOAT16)
#: Teacher activations are computed once and kept when they fit in this many bytes, else per batch.
TEACHER_CACHE_BYTES = 1 << 30


def require_torch() -> Any:
    """`import torch`, or a one-line PassError naming the extra that installs it."""
    try:
        import torch
    except ImportError:
        raise PassInputError(f"distill needs PyTorch, which is not installed: {INSTALL_HINT}") from None
    return torch


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def load_training_data(model: Model, calib: str, limit: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """All samples of `calib` in memory: ({input name: array [N, ...]}, labels [N] or None).

    `calib` is what quant8 takes (`lepton_passes.quant.calibration.load_samples`): a `.npz` with
    one array per model input (first axis = samples; with a single input any one key), a folder of
    `.npz`/`.npy` samples, or `random:N`. A `labels` array (integer class per sample) in the
    `.npz` (or in every file of the folder) adds the cross-entropy term.
    """
    from ..quant.calibration import _check_feed, _data_inputs, _read_arrays, load_samples

    inputs = _data_inputs(model)
    names = [v.name for v in inputs]
    if not calib:
        raise PassInputError("distill needs training data: calib=FILE.npz|FOLDER|random:N (docs/distill.md)")
    path = Path(calib)
    labels: list[np.ndarray] = []
    parts: dict[str, list[np.ndarray]] = {k: [] for k in names}

    def take(arrays: dict[str, np.ndarray], where: str, per_sample: bool) -> None:
        arrays = dict(arrays)
        lab = arrays.pop("labels", None)
        if len(names) == 1 and names[0] not in arrays and len(arrays) == 1:
            arrays = {names[0]: next(iter(arrays.values()))}
        missing = [k for k in names if k not in arrays]
        if missing:
            raise PassInputError(f"{where}: no array for model input {missing[0]!r} (has {sorted(arrays)})")
        for k in names:
            a = arrays[k]
            v = next(x for x in inputs if x.name == k)
            rank = v.shape.rank if v.shape is not None else None
            if per_sample and rank is not None and a.ndim == rank - 1:
                a = a[None]
            if a.ndim == 0:
                raise PassInputError(f"{where}: array for {k!r} is a scalar; its first axis must count the samples")
            parts[k].append(a)
        if lab is not None:
            labels.append(np.asarray(lab).reshape(-1))

    try:
        is_file, is_dir = path.is_file(), path.is_dir()
    except (OSError, ValueError):
        is_file = is_dir = False
    if is_file:
        take(_read_arrays(path), f"training data {calib}", per_sample=False)
    elif is_dir:
        files = sorted(p for p in path.iterdir() if p.suffix in (".npz", ".npy"))
        if not files:
            raise PassInputError(f"training data folder {calib} holds no .npz/.npy files")
        for p in files:
            take(_read_arrays(p), str(p), per_sample=True)
    else:  # random:N (and the errors load_samples words for anything else)
        feeds, _ = load_samples(model, calib, 1, limit)
        for f in feeds:
            take(f, calib, per_sample=False)
    try:
        data = {k: np.concatenate(v, axis=0) for k, v in parts.items()}
    except ValueError as e:
        raise PassInputError(f"training data {calib}: samples of different shapes cannot be batched ({e})") from None
    n = min((a.shape[0] for a in data.values()), default=0)
    if n == 0:
        raise PassInputError(f"training data {calib} holds no samples")
    lab = np.concatenate(labels) if labels else None
    if lab is not None and lab.shape[0] < n:
        raise PassInputError(f"training data {calib}: {lab.shape[0]} labels for {n} samples")
    if limit:
        n = min(n, limit)
    data = {k: a[:n] for k, a in data.items()}
    _check_feed({k: a[:1] for k, a in data.items()}, inputs, f"training data {calib}")
    return data, (lab[:n].astype(np.int64) if lab is not None else None)


# ---------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------
class TrainProgress:
    """Loss and ETA on stderr: one rewritten line on a TTY, one line per epoch otherwise."""

    def __init__(self, epochs: int, steps: int, enabled: bool, budget: float) -> None:
        self.epochs, self.steps, self.budget = epochs, steps, budget
        self.enabled = enabled and os.environ.get("LEPTON_NO_PROGRESS", "") == ""
        self.tty = bool(getattr(sys.stderr, "isatty", lambda: False)())
        self.t0 = time.perf_counter()
        self._last = 0.0
        self.done = 0

    def eta(self) -> float:
        el = time.perf_counter() - self.t0
        left = (self.epochs * self.steps - self.done) * el / max(self.done, 1)
        if self.budget > 0:
            left = min(left, max(self.budget - el, 0.0))
        return left

    def line(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write(("\r\x1b[K" if self.tty else "") + text + "\n")
            sys.stderr.flush()

    def step(self, epoch: int, i: int, loss: float) -> None:
        self.done += 1
        if not (self.enabled and self.tty):
            return
        now = time.perf_counter()
        if now - self._last < 0.2 and i < self.steps:
            return
        self._last = now
        k = int(20 * i / max(self.steps, 1))
        sys.stderr.write(f"\r\x1b[Kdistill: epoch {epoch}/{self.epochs} [{'#' * k}{' ' * (20 - k)}] {i}/{self.steps} "
                         f"loss {loss:.4f} ETA {self.eta():.0f}s")
        sys.stderr.flush()

    def epoch(self, epoch: int, loss: float, val: float | None, best: bool) -> None:
        v = f" val {val:.4f}{' *' if best else ''}" if val is not None else ""
        self.line(f"distill: epoch {epoch}/{self.epochs} loss {loss:.4f}{v} "
                  f"{time.perf_counter() - self.t0:.1f}s ETA {self.eta():.0f}s")


# ---------------------------------------------------------------------------------------------
# The pass
# ---------------------------------------------------------------------------------------------
@register_pass
@dataclass(frozen=True)
class Distill(Pass):
    """Recover accuracy by knowledge distillation from the unpruned teacher (CPU, PyTorch; docs/distill.md)."""

    name = "distill"

    teacher: str = field(default="", metadata={
        "help": "teacher .onnx; default: the snapshot an earlier pass (prune) recorded in the model"})
    calib: str = field(default="", metadata={
        "help": "training data as quant8 takes it: .npz (one array per input, first axis = samples, "
                "optional `labels`), a folder of .npz/.npy samples, or random:N"})
    epochs: int = field(default=10, metadata={"help": "passes over the training data"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate (cosine decay to lr/10)"})
    batch: int = field(default=32, metadata={"help": "samples per step"})
    temperature: float = field(default=4.0, metadata={"help": "softmax temperature of the KD loss"})
    seed: int = field(default=0, metadata={"help": "seed of the split, the shuffles and torch"})
    val_split: float = field(default=0.1, metadata={
        "help": "fraction held out for validation, early stopping and the choice of the best weights; 0: none"})
    patience: int = field(default=3, metadata={"help": "epochs without a better validation loss before stopping"})
    time_budget: float = field(default=0.0, metadata={"help": "stop training after this many seconds (0: none)"})
    kd_weight: float = field(default=1.0, metadata={"help": "weight of the output (KD) loss"})
    feature_weight: float = field(default=1.0, metadata={"help": "weight of the feature loss"})
    label_weight: float = field(default=1.0, metadata={"help": "weight of the cross-entropy (data with labels)"})
    features: Literal["auto", "all", "none"] = field(default="auto", metadata={
        "help": "feature-loss values: auto = shared block outputs, all = every shared float value"})
    output_loss: Literal["kl", "mse"] = field(default="kl", metadata={
        "help": "loss on the graph outputs: kl (logits, with temperature) or mse"})
    samples: int = field(default=0, metadata={"help": "use at most this many samples (0: all)"})
    threads: int = field(default=1, metadata={
        "help": "torch CPU threads (0: torch's default); 1 keeps runs reproducible across machines and "
                "small models fast on a busy machine"})
    progress: bool = field(default=True, metadata={"help": "loss and ETA on stderr"})

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch < 1 or self.patience < 1 or self.samples < 0 or self.threads < 0:
            raise ValueError("epochs, samples and threads must be >= 0, batch and patience >= 1")
        if not (0.0 <= self.val_split < 1.0):
            raise ValueError(f"val-split must be in [0, 1), not {self.val_split}")
        if not (self.lr > 0 and self.temperature > 0 and self.time_budget >= 0):
            raise ValueError("lr and temperature must be > 0, time-budget >= 0")

    def tolerance(self, model: Model) -> tuple[float, float]:
        # Training moves the outputs by design: the result is judged on accuracy, not equality.
        return (0.0, math.inf)

    # -------------------------------------------------------------------------------------------
    def teacher_source(self, model: Model) -> tuple[Model | None, str]:
        """(teacher model, where it came from): `teacher=PATH`, else the unpruned model an earlier
        `prune` kept in `model.graph.meta["lepton.prune.original"]`; (None, "") without either."""
        import lepton_ir

        if self.teacher:
            try:
                return lepton_ir.load(self.teacher), self.teacher
            except lepton_ir.LeptonError as e:
                raise PassInputError(f"distill: cannot load teacher {self.teacher}: {str(e).splitlines()[0]}") from None
            except OSError as e:
                raise PassInputError(f"distill: cannot load teacher {self.teacher}: {e.strerror or e}") from None
        snap = model.graph.meta.get(PRUNE_ORIGINAL_KEY)
        if snap is not None:
            return lepton_ir.load(snap), "the model before prune"
        return None, ""

    def run(self, model: Model) -> bool:
        teacher, where = self.teacher_source(model)
        if teacher is None:
            print("distill: no teacher (teacher=PATH, or prune earlier in the same pipeline); the model is "
                  "left as it is", file=sys.stderr)
            return False
        require_torch()
        from ..util import unfuse

        changed = unfuse(model)
        unfuse(teacher)
        data, labels = load_training_data(model, self.calib, self.samples)
        trained = _train(self, model, teacher, where, data, labels)
        return trained or changed


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def _float_outputs(m: Model) -> list[Value]:
    return [v for v in m.graph.outputs if v.dtype in _FLOAT]


def _match_outputs(student: Model, teacher: Model) -> list[tuple[str, str]]:
    """(student output, teacher output) name pairs: by name, else by position."""
    s_out, t_out = _float_outputs(student), _float_outputs(teacher)
    t_names = {v.name for v in t_out}
    pairs = [(v.name, v.name) for v in s_out if v.name in t_names]
    if not pairs and len(s_out) == len(t_out):
        pairs = [(a.name, b.name) for a, b in zip(s_out, t_out)]
    return pairs


def _feature_candidates(student: Model, teacher: Model, mode: str) -> list[str]:
    """Names of intermediate float values both models hold with the same producer op (shapes are
    checked on the first batch)."""
    if mode == "none":
        return []
    outs = {v.name for v in student.graph.outputs} | {v.name for v in teacher.graph.outputs}

    def table(m: Model) -> dict[str, tuple[str, Any]]:
        res = {}
        for n in m.graph:
            for o in n.outputs:
                if o.name and o.name not in outs and (o.dtype is None or o.dtype in _FLOAT):
                    res[o.name] = (n.op_type, o.shape)
        return res

    s, t = table(student), table(teacher)
    names = []
    for name, (op, shape) in s.items():
        other = t.get(name)
        if other is None or other[0] != op:
            continue
        if mode == "auto":
            if op not in BLOCK_OPS:
                continue
            if op == "Add":  # a residual join (two computed operands), not a bias add
                node = next(n for n in student.graph if any(o.name == name for o in n.outputs))
                if any(x is None or x.const is not None or (x.producer() is not None and x.producer().op_type == "Constant")
                       for x in node.inputs):
                    continue
        if shape is not None and other[1] is not None and shape.rank is not None and other[1].rank is not None:
            if shape.rank != other[1].rank or any(isinstance(a, int) and isinstance(b, int) and a != b
                                                  for a, b in zip(shape, other[1])):
                continue
        names.append(name)
    return names


class _Teacher:
    """Teacher outputs and features per sample index: computed once (ONNX Runtime) when they fit
    in TEACHER_CACHE_BYTES, else per batch."""

    def __init__(self, teacher: Model, out_names: list[str], feat_names: list[str], data: dict[str, np.ndarray],
                 batch: int) -> None:
        from ..quant.calibration import ort_session_with_outputs

        by_name = {}
        for n in teacher.graph:
            for o in n.outputs:
                if o.name in feat_names:
                    by_name[o.name] = o
        self.sess = ort_session_with_outputs(teacher, [by_name[k] for k in feat_names if k in by_name])
        self.names = out_names + [k for k in feat_names if k in by_name]
        in_names = {i.name for i in self.sess.get_inputs()}
        missing = [k for k in in_names if k not in data]
        if missing:
            raise PassInputError(f"distill: the teacher's input {missing[0]!r} is not an input of the student")
        self.in_names = sorted(in_names)
        self.data, self.batch = data, batch
        self.n = min(a.shape[0] for a in data.values())
        self.cache: dict[str, np.ndarray] | None = None
        first = self._run(np.arange(min(batch, self.n)))
        per_sample = sum(a.nbytes for a in first.values()) / max(1, min(batch, self.n))
        if per_sample * self.n <= TEACHER_CACHE_BYTES:
            chunks = [first] + [self._run(np.arange(i, min(i + batch, self.n))) for i in range(batch, self.n, batch)]
            self.cache = {k: np.concatenate([c[k] for c in chunks], axis=0) for k in self.names}

    def _run(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        out_names = [o.name for o in self.sess.get_outputs()]
        res = self.sess.run(None, {k: self.data[k][idx] for k in self.in_names})
        got = dict(zip(out_names, res))
        return {k: np.asarray(got[k]) for k in self.names}

    def get(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        if self.cache is not None:
            return {k: v[idx] for k, v in self.cache.items()}
        return self._run(idx)


def _train(opts: Distill, model: Model, teacher: Model, where: str, data: dict[str, np.ndarray],
           labels: np.ndarray | None) -> bool:
    import torch
    import torch.nn.functional as F

    from .torch_lowering import TorchModule, to_torch

    n = min(a.shape[0] for a in data.values())
    batch = opts.batch
    for v in model.graph.inputs:  # a fixed batch dimension fixes the step size
        if v.name in data and v.shape is not None and v.shape.rank and isinstance(v.shape[0], int):
            batch = int(v.shape[0])
    pairs = _match_outputs(model, teacher)
    if not pairs:
        raise PassError("distill: the student and the teacher share no float output to distill")
    feats = _feature_candidates(model, teacher, opts.features) if opts.feature_weight > 0 else []
    rng = np.random.default_rng(opts.seed)
    perm = rng.permutation(n)
    n_val = int(round(n * opts.val_split)) if opts.val_split > 0 else 0
    if n_val and n - n_val < 1:
        n_val = 0
    fixed = _fixed_batch(model)
    if fixed:  # a model with a fixed batch dimension runs only full batches
        n_val = (n_val // batch) * batch
    val_idx, train_idx = np.sort(perm[:n_val]), perm[n_val:]
    t_start = time.perf_counter()
    tdata = _Teacher(teacher, [t for _, t in pairs], feats, data, batch)
    feats = [k for k in feats if k in tdata.names]

    use_labels = labels is not None and opts.label_weight > 0
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(opts.seed)
        _set_deterministic(torch, True)
        if opts.threads:
            torch.set_num_threads(opts.threads)
        try:
            module = TorchModule(model)
            params = [p for p in module.parameters() if p.requires_grad]
            if not params:
                raise PassError("distill: the student has no trainable weights (docs/distill.md lists them)")

            def feeds_for(idx: np.ndarray) -> dict[str, Any]:
                return {k: to_torch(a[idx]) for k, a in data.items()}

            # Drop features whose shapes differ (e.g. a pruned conv's output) on one sample.
            idx0 = np.arange(min(batch, n))
            with torch.no_grad():
                s0 = module(feeds_for(idx0), want=feats)
            t0 = tdata.get(idx0)
            feats = [k for k in feats if k in s0 and tuple(s0[k].shape) == t0[k].shape]
            for s_name, t_name in pairs:
                if tuple(s0[s_name].shape) != t0[t_name].shape:
                    raise PassError(f"distill: output {s_name!r} is {list(s0[s_name].shape)} in the student and "
                                    f"{list(t0[t_name].shape)} in the teacher")
            T = float(opts.temperature)

            def loss_of(idx: np.ndarray) -> torch.Tensor:
                s = module(feeds_for(idx), want=feats)
                t = tdata.get(idx)
                total = torch.zeros((), dtype=torch.float32)
                if opts.kd_weight > 0:
                    kd = torch.zeros((), dtype=torch.float32)
                    for s_name, t_name in pairs:
                        so, to = s[s_name].float(), torch.from_numpy(t[t_name]).float()
                        if opts.output_loss == "kl" and so.dim() >= 1 and so.shape[-1] > 1:
                            lt = F.log_softmax(to / T, dim=-1)
                            ls = F.log_softmax(so / T, dim=-1)
                            kl = (lt.exp() * (lt - ls)).sum(-1).mean()
                            kd = kd + kl * T * T
                        else:
                            kd = kd + F.mse_loss(so, to)
                    total = total + opts.kd_weight * kd / len(pairs)
                if feats:
                    fl = torch.zeros((), dtype=torch.float32)
                    for k in feats:
                        tf = torch.from_numpy(t[k]).float()
                        fl = fl + F.mse_loss(s[k].float(), tf) / (tf.pow(2).mean() + 1e-8)
                    total = total + opts.feature_weight * fl / len(feats)
                if use_labels:
                    logits = s[pairs[0][0]].float()
                    y = torch.from_numpy(labels[idx])
                    if logits.dim() == 2 and logits.shape[0] == y.shape[0]:
                        total = total + opts.label_weight * F.cross_entropy(logits, y)
                return total

            def val_loss() -> float | None:
                if not n_val:
                    return None
                tot = 0.0
                with torch.no_grad():
                    for i in range(0, n_val, batch):
                        idx = val_idx[i:i + batch]
                        tot += float(loss_of(idx)) * len(idx)
                return tot / n_val

            steps = max(1, math.ceil(len(train_idx) / batch))
            total_steps = max(1, opts.epochs * steps)
            opt = _Adam(torch, params)
            step_no = 0
            bar = TrainProgress(opts.epochs, steps, opts.progress, opts.time_budget)
            bar.line(f"distill: teacher {where}; {len(train_idx)} training / {n_val} validation samples"
                     f"{' with labels' if use_labels else ''}; {len(params)} weights; outputs "
                     f"{', '.join(s for s, _ in pairs)}; {len(feats)} matched features")
            initial = {k: v.detach().clone() for k, v in module.params.items()}
            best_val = val_loss()
            first_val = best_val
            best_state = initial
            since_best, epochs_run, stop = 0, 0, ""
            budget_end = t_start + opts.time_budget if opts.time_budget > 0 else math.inf
            for epoch in range(1, opts.epochs + 1):
                order = train_idx[rng.permutation(len(train_idx))]
                run_loss, seen = 0.0, 0
                for i in range(steps):
                    idx = order[i * batch:(i + 1) * batch]
                    if len(idx) == 0 or (fixed and len(idx) < batch):
                        continue
                    for p in params:
                        p.grad = None
                    loss = loss_of(idx)
                    if not torch.isfinite(loss):
                        stop = "the loss is not finite (lower lr=)"
                        break
                    loss.backward()
                    lr = opts.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(step_no, total_steps) / total_steps)))
                    opt.step(lr, clip=5.0)
                    step_no += 1
                    run_loss += float(loss.detach()) * len(idx)
                    seen += len(idx)
                    bar.step(epoch, i + 1, run_loss / max(seen, 1))
                    if time.perf_counter() > budget_end:
                        stop = f"time budget of {opts.time_budget:g}s reached"
                        break
                epochs_run = epoch
                v = val_loss() if not stop.startswith("the loss") else None
                improved = v is not None and (best_val is None or v < best_val)
                if improved:
                    best_val, best_state, since_best = v, {k: p.detach().clone() for k, p in module.params.items()}, 0
                elif v is not None:
                    since_best += 1
                bar.epoch(epoch, run_loss / max(seen, 1), v, improved)
                if stop:
                    break
                if n_val and since_best >= opts.patience:
                    stop = f"early stop: no better validation loss in {opts.patience} epochs"
                    break
            if not n_val and not stop.startswith("the loss"):
                best_state = {k: p.detach().clone() for k, p in module.params.items()}
            with torch.no_grad():
                for k, p in module.params.items():
                    p.copy_(best_state[k])
            written = module.write_back(model)
            el = time.perf_counter() - t_start
            vtxt = (f"; validation loss {first_val:.4f} -> {best_val:.4f}" if first_val is not None else "")
            bar.line(f"distill: {epochs_run} epochs in {el:.1f}s{vtxt}; {written} weights written"
                     f"{'; ' + stop if stop else ''}")
            if written:
                model.metadata_props["lepton.distill"] = (
                    f"epochs={epochs_run};seconds={el:.1f}"
                    + (f";val_loss={first_val:.6g}->{best_val:.6g}" if first_val is not None else ""))
            return written > 0
        finally:
            _set_deterministic(torch, deterministic, warn_only)
            if opts.threads:
                torch.set_num_threads(threads)


class _Adam:
    """Adam (Kingma & Ba; torch.optim.Adam's defaults) with global gradient-norm clipping.

    Hand-written because constructing any torch.optim optimizer imports torch._dynamo (8 s on a
    busy 2-core machine, longer than training the digits CNN)."""

    def __init__(self, torch: Any, params: list, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.torch, self.params, self.betas, self.eps, self.t = torch, params, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def step(self, lr: float, clip: float = 0.0) -> None:
        torch = self.torch
        b1, b2 = self.betas
        self.t += 1
        with torch.no_grad():
            grads = [p.grad for p in self.params]
            scale = 1.0
            if clip > 0:
                norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads if g is not None))
                if norm > clip:
                    scale = clip / (norm + 1e-6)
            c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
            for p, g, m, v in zip(self.params, grads, self.m, self.v):
                if g is None:
                    continue
                if scale != 1.0:
                    g = g * scale
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                p.addcdiv_(m, (v / c2).sqrt_().add_(self.eps), value=-lr / c1)


def _set_deterministic(torch: Any, mode: bool, warn_only: bool = False) -> None:
    """`torch.use_deterministic_algorithms(mode)` without its import of torch._inductor (9 s on a
    busy machine) when inductor is not loaded: its only other effect is inductor's config flag."""
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if "torch._inductor" in sys.modules or setter is None:
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    else:
        setter(mode, warn_only=warn_only)


def _fixed_batch(model: Model) -> bool:
    return any(v.shape is not None and v.shape.rank and isinstance(v.shape[0], int) for v in model.graph.inputs
               if v.const is None)
