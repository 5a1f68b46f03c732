"""`onnx.backend.base.Backend` over Lepton: import -> pipeline -> a Lepton backend -> run.

This lets onnx's own conformance machinery (`onnx.backend.test.BackendTest`) exercise the whole
stack exactly as users run it:

    from lepton.onnx_backend import backend_for
    Backend = backend_for("onnx", "canonicalize")      # or ("tvm-cpu", "canonicalize,fuse")
    rep = Backend.prepare(model_proto)
    outputs = rep.run([x, y])

Each `prepare` compiles into a private temporary folder that lives as long as the returned rep.
"""

from __future__ import annotations

import tempfile
from typing import Any, Sequence

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep, Device, DeviceType


class LeptonRep(BackendRep):
    """A prepared model: runs positional inputs, returns outputs in graph order."""

    def __init__(self, runner: Any, input_names: list[str], output_names: list[str],
                 tmp: tempfile.TemporaryDirectory) -> None:
        self.runner = runner
        self.input_names = input_names
        self.output_names = output_names
        self._tmp = tmp  # keeps the artifact folder alive as long as the rep

    def run(self, inputs: Any, **kwargs: Any) -> tuple[Any, ...]:
        if isinstance(inputs, dict):
            feeds = dict(inputs)
        else:
            seq = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
            feeds = dict(zip(self.input_names, seq))
        out = self.runner.run(feeds)
        return tuple(out[n] for n in self.output_names)


class LeptonBackend(Backend):
    """Base class; use `backend_for(backend, pipeline)` to get a configured subclass."""

    lepton_backend = "onnx"
    pipeline = "canonicalize"
    target: str | None = None

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> LeptonRep:
        from . import driver, runtime

        super().prepare(model, device, **kwargs)
        inits = {t.name for t in model.graph.initializer}
        input_names = [i.name for i in model.graph.input if i.name not in inits]
        output_names = [o.name for o in model.graph.output]
        tmp = tempfile.TemporaryDirectory(prefix="lepton-onnx-backend-")
        out = f"{tmp.name}/artifact"
        driver.optimize(model, passes=cls.pipeline, backend=cls.lepton_backend, output=out, target=cls.target,
                        reproducer_dir=None)
        return LeptonRep(runtime.load(out), input_names, output_names, tmp)

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any) -> tuple[Any, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return Device(device).type == DeviceType.CPU


def backend_for(backend: str = "onnx", pipeline: str = "canonicalize", target: str | None = None) -> type[LeptonBackend]:
    """A LeptonBackend subclass bound to a Lepton backend name and a pipeline."""
    name = f"Lepton[{backend}|{pipeline}]"
    return type(name, (LeptonBackend,), {"lepton_backend": backend, "pipeline": pipeline, "target": target})


def run_node_case(backend: type[LeptonBackend], model: onnx.ModelProto, inputs: Sequence[Any]) -> list[Any]:
    """Prepare and run one conformance case; outputs as a list."""
    return list(backend.prepare(model).run(list(inputs)))
