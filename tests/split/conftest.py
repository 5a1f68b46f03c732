from __future__ import annotations

import functools

import pytest

import lepton_ir


@functools.lru_cache(maxsize=None)
def _real(name: str):
    from lepton_ir.testing import corpus

    if name == "digits":
        model = lepton_ir.load(corpus.digits_model_path())
        shapes = {"image": [1, 1, 8, 8]}
    elif name == "silero-vad-ifless":
        model = lepton_ir.load(corpus.real_model_path("silero-vad-ifless"))
        shapes = {"input": [1, 512], "state": [2, 1, 128]}
    elif name == "magika-head":
        # magika's graph up to its first Conv: a chain-like 50-node prefix small enough to enumerate.
        from lepton_passes import PassManager

        model = lepton_ir.load(corpus.real_model_path("magika"))
        lepton_ir.pin_input_shapes(model, {"bytes": [1, 2048]})
        PassManager("canonicalize", verify_each=False).run(model)
        conv = next(n for n in model.graph if n.op_type == "Conv")
        model = lepton_ir.extract(model, [v.name for v in model.graph.inputs if v.const is None], [conv.outputs[0].name])
        shapes = None
    else:
        raise KeyError(name)
    return lepton_ir.weighted_view(model, shapes), len(model.graph)


@pytest.fixture
def real_view():
    def get(name):
        try:
            return _real(name)
        except FileNotFoundError as e:
            pytest.skip(str(e))
    return get
