"""The `distill` pass: recovery of a perturbed digits CNN, determinism, the time budget, early
stopping, progress, the teacher sources, and the one-line errors (torch missing, no data)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import lepton_ir
from lepton_ir.testing import corpus
from lepton_passes import PassError, PassManager, get_pass, parse_pipeline

from distill_helpers import digits_accuracy, perturb

pytestmark = pytest.mark.timeout(300)


def _distill(**opts):
    return get_pass("distill")(**opts)


def _weights(model):
    return {k: v.const.numpy().copy() for k, v in model.graph.initializers.items()}


def test_recovers_perturbed_digits(torch, digits_files, capsys):
    """Noise on conv2 takes the digits CNN from 99% to ~49% test accuracy; five epochs of KD from
    the original (no labels) on the train split bring it back above 95%, in well under a minute."""
    teacher, student_path, _, train = digits_files
    X, y = corpus.digits_dataset("test")
    student = lepton_ir.load(student_path)
    before = digits_accuracy(student, X, y)
    t0 = time.perf_counter()
    assert _distill(teacher=str(teacher), calib=str(train), epochs=5).run(student)
    elapsed = time.perf_counter() - t0
    after = digits_accuracy(student, X, y)
    print(f"digits: perturbed {before:.3f} -> distilled {after:.3f} in {elapsed:.1f}s", file=sys.stderr)
    assert before < 0.7
    assert after >= 0.95 and after > before + 0.25
    assert elapsed < 60
    student.verify()
    assert "lepton.distill" in student.metadata_props
    err = capsys.readouterr().err
    assert "distill: epoch 5/5" in err and "ETA" in err  # line-based progress (stderr is not a TTY here)


def test_same_seed_same_weights(torch, digits_files):
    teacher, student_path, train, _ = digits_files
    opts = dict(teacher=str(teacher), calib=str(train), epochs=2, samples=384, seed=7, progress=False)
    runs = []
    for seed in (7, 7, 8):
        m = lepton_ir.load(student_path)
        _distill(**{**opts, "seed": seed}).run(m)
        runs.append(_weights(m))
    assert runs[0].keys() == runs[1].keys()
    assert all(np.array_equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert any(not np.array_equal(runs[0][k], runs[2][k]) for k in runs[0])  # the seed matters


def test_time_budget_stops_training(torch, digits_files, capsys):
    teacher, student_path, _, train = digits_files
    m = lepton_ir.load(student_path)
    t0 = time.perf_counter()
    assert _distill(teacher=str(teacher), calib=str(train), epochs=500, time_budget=2.0).run(m)
    elapsed = time.perf_counter() - t0
    assert elapsed < 30
    assert "time budget of 2s reached" in capsys.readouterr().err
    epochs = int(m.metadata_props["lepton.distill"].split(";")[0].split("=")[1])
    assert 1 <= epochs < 500


def test_early_stopping_keeps_the_best_weights(torch, digits_files, capsys):
    """A learning rate that wrecks the weights: validation never improves on the initial weights,
    so training stops after `patience` epochs and the model is left as it was (changed=False)."""
    teacher, student_path, _, train = digits_files
    m = lepton_ir.load(student_path)
    before = _weights(m)
    changed = _distill(teacher=str(teacher), calib=str(train), epochs=20, lr=50.0, patience=2, samples=512).run(m)
    err = capsys.readouterr().err
    assert "early stop" in err or "not finite" in err
    assert not changed
    assert all(np.array_equal(before[k], v) for k, v in _weights(m).items())


def test_labels_add_cross_entropy(torch, digits_files, capsys):
    teacher, student_path, train, _ = digits_files
    m = lepton_ir.load(student_path)
    assert _distill(teacher=str(teacher), calib=str(train), epochs=1, samples=256).run(m)
    assert "with labels" in capsys.readouterr().err


def test_pipeline_text_through_the_manager(torch, digits_files):
    """As a pipeline in the PassManager (strict: its change report is checked by fingerprint)."""
    teacher, student_path, _, train = digits_files
    m = lepton_ir.load(student_path)
    p = parse_pipeline(f'distill{{teacher="{teacher}",calib="{train}",epochs=1,samples=256,val-split=0,'
                       'progress=false}')
    assert str(parse_pipeline(str(p))) == str(p)
    report = PassManager(p, strict_changed=True).run(m)
    assert report.changed


def test_teacher_snapshot_from_prune(torch, digits_files):
    """Without teacher=, the teacher is the unpruned model `prune` kept in graph.meta."""
    teacher, student_path, _, train = digits_files
    m = lepton_ir.load(student_path)
    m.graph.meta["lepton.prune.original"] = lepton_ir.to_onnx(lepton_ir.load(teacher))
    assert _distill(calib=str(train), epochs=1, samples=256, progress=False).run(m)


def test_prune_then_distill(torch, digits_files, capsys):
    """The pipeline of issue #14 without reconstruct: prune half the channels, distill from the
    model before prune (its snapshot), on the train split; test accuracy recovers."""
    _, _, _, train = digits_files
    X, y = corpus.digits_dataset("test")
    pruned = lepton_ir.load(corpus.digits_model_path())
    PassManager("prune{ratio=0.5,multiple=1}").run(pruned)
    base = digits_accuracy(pruned, X, y)
    m = lepton_ir.load(corpus.digits_model_path())
    PassManager(f'prune{{ratio=0.5,multiple=1}},distill{{calib="{train}",epochs=5}}').run(m)
    after = digits_accuracy(m, X, y)
    assert "teacher the model before prune" in capsys.readouterr().err
    assert after > base + 0.08 and after >= 0.95, (base, after)


def test_no_teacher_leaves_the_model(digits_files, capsys):
    """No teacher= and no snapshot: nothing to distill from; no torch needed either."""
    _, student_path, _, train = digits_files
    m = lepton_ir.load(student_path)
    before = _weights(m)
    assert not _distill(calib=str(train)).run(m)
    assert "no teacher" in capsys.readouterr().err
    assert all(np.array_equal(before[k], v) for k, v in _weights(m).items())


def test_missing_data_is_one_line(torch, digits_files):
    teacher, student_path, _, _ = digits_files
    m = lepton_ir.load(student_path)
    with pytest.raises(PassError, match="calib=") as info:
        _distill(teacher=str(teacher)).run(m)
    assert "\n" not in str(info.value)


def test_bad_options_are_pipeline_errors():
    with pytest.raises(PassError, match="val-split"):
        parse_pipeline("distill{val-split=1.5}")


def test_without_torch_registers_and_fails_in_one_line(digits_files):
    """torch made unimportable (sys.modules["torch"] = None) in a fresh interpreter: the pass
    registers and parses, and running it is a one-line PassError naming the extra."""
    teacher, student_path, _, train = digits_files
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None
        import lepton_ir
        from lepton_passes import PassError, list_passes, parse_pipeline
        assert "distill" in list_passes()
        p = parse_pipeline('distill{{teacher="{teacher}",calib="{train}"}}')
        m = lepton_ir.load("{student_path}")
        try:
            p.run(m)
        except PassError as e:
            print("ERROR:" + str(e))
        else:
            print("NO ERROR")
    """)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("ERROR:")]
    assert len(lines) == 1, out.stdout
    assert "pip install lepton[train]" in lines[0]
    assert out.stdout.count("\n") == 1  # the message is one line
