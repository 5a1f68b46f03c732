"""`onnx.backend.base.Backend` over Lepton: import -> pipeline -> a Lepton backend -> run.

This lets onnx's own conformance machinery (`onnx.backend.test.BackendTest`) exercise the whole
stack exactly as users run it:

    from lepton.onnx_backend import backend_for
    Backend = backend_for("onnx", "canonicalize")      # or ("tvm-cpu", "canonicalize,fuse")
    Strict = backend_for("tvm-cpu", "canonicalize", options={"fallback": False})   # backend options
    rep = Backend.prepare(model_proto)
    outputs = rep.run([x, y])

Each compilation writes into a private temporary folder that lives as long as the returned rep.
`options` are the Lepton backend's options, as `lepton.optimize(..., **options)` takes them (e.g.
`fallback=False`: tvm-cpu fails where TVM cannot compile the whole model instead of running the
rest on ONNX Runtime stages; the CLI's `--no-fallback`).

Specialising on shape-determining inputs. Static compilers (TVM, like XLA) must know at compile
time the values that fix shapes or name axes: Reshape's shape, Reduce*'s axes, Resize's sizes,
TopK's K, ... (`lepton_ir.analysis.SHAPE_OPERANDS`). A model may take such a value as a graph
input. For a backend whose class sets `needs_static_shape_values = True` (the TVM backends), an
input is *shape-determining* when every use of it reaches such an operand position, directly or
through pure int arithmetic (`lepton_ir.analysis.shape_determining_inputs`); an input with any
other use is data and is never bound. When a model has shape-determining inputs, `prepare()` only
checks it imports, and the rep compiles lazily on each `run()` with the values it is given bound as
constants: the pipeline becomes `bind-inputs{values=[...]},canonicalize,<pipeline>` -- the same
thing a user writes on the command line with `--passes`. Compiled artifacts are cached per distinct
bound values, so running again with the same values reuses the artifact and new values recompile.
Models without shape-determining inputs, and backends that take such values at run time (`onnx`),
compile once in `prepare()` as before.
"""

from __future__ import annotations

import json
import tempfile
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep, Device, DeviceType


def binding_text(name: str, value: Any) -> str:
    """`NAME=V1:V2:...` for the bind-inputs pass; exact for ints (str) and floats (repr of a double)."""
    arr = np.asarray(value)
    if arr.ndim > 1:
        raise ValueError(f"bind-inputs takes scalar or 1-D values; input {name!r} has shape {arr.shape}")
    if arr.dtype.kind in "iub":
        items = [str(int(v)) for v in arr.reshape(-1)]
    elif arr.dtype.kind == "f":
        items = [repr(float(v)) for v in arr.reshape(-1)]
    else:
        raise ValueError(f"bind-inputs cannot bind input {name!r} of dtype {arr.dtype}")
    return f"{name}={':'.join(items)}"


class LeptonRep(BackendRep):
    """A prepared model: runs positional inputs, returns outputs in graph order.

    With `specialize` (names of shape-determining inputs), compilation happens on `run()`, once
    per distinct values of those inputs (see the module docstring); otherwise `runner` is ready.
    """

    def __init__(self, runner: Any, input_names: list[str], output_names: list[str],
                 tmp: tempfile.TemporaryDirectory | None, *, backend: "type[LeptonBackend] | None" = None,
                 model: onnx.ModelProto | None = None, specialize: Sequence[str] = ()) -> None:
        self.runner = runner
        self.input_names = input_names
        self.output_names = output_names
        self.specialize = list(specialize)
        self._tmp = tmp  # keeps the artifact folder alive as long as the rep
        self._backend = backend
        self._model = model
        #: bound values (as bind-inputs text) -> (runner, its temporary folder)
        self.compiled: dict[tuple[str, ...], tuple[Any, tempfile.TemporaryDirectory]] = {}

    def _runner_for(self, feeds: dict[str, Any]) -> Any:
        if not self.specialize:
            return self.runner
        key = tuple(binding_text(n, feeds[n]) for n in self.specialize)
        if key not in self.compiled:
            assert self._backend is not None and self._model is not None
            self.compiled[key] = self._backend._compile(self._model, bindings=key)
        return self.compiled[key][0]

    def run(self, inputs: Any, **kwargs: Any) -> tuple[Any, ...]:
        if isinstance(inputs, dict):
            feeds = dict(inputs)
        else:
            seq = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
            feeds = dict(zip(self.input_names, seq))
        runner = self._runner_for(feeds)
        # Bound inputs are constants of the compiled model, no longer part of its interface.
        out = runner.run({k: v for k, v in feeds.items() if k not in self.specialize})
        return tuple(out[n] for n in self.output_names)


class LeptonBackend(Backend):
    """Base class; use `backend_for(backend, pipeline)` to get a configured subclass."""

    lepton_backend = "onnx"
    pipeline = "canonicalize"
    target: str | None = None
    #: options of the Lepton backend (`lepton.optimize`'s keyword options, e.g. {"fallback": False})
    backend_options: dict[str, Any] = {}
    #: specialise on shape-determining inputs when the Lepton backend asks for it (None: ask it)
    specialize_shape_inputs: bool | None = None

    @classmethod
    def _needs_static_shape_values(cls) -> bool:
        if cls.specialize_shape_inputs is not None:
            return cls.specialize_shape_inputs
        from lepton_backends import get_backend

        return bool(getattr(get_backend(cls.lepton_backend), "needs_static_shape_values", False))

    @classmethod
    def _compile(cls, model: onnx.ModelProto, bindings: Sequence[str] = ()) -> tuple[Any, tempfile.TemporaryDirectory]:
        """Compile `model` (with `bindings` bound first) into a fresh temporary folder; (runner, folder)."""
        from . import driver, runtime

        passes = cls.pipeline
        if bindings:
            # bind-inputs then canonicalize: folding the now-constant shape computations is what
            # gives the backend its compile-time shapes.
            bind = "bind-inputs{values=" + json.dumps(list(bindings)) + "}"
            first = cls.pipeline.split(",")[0].split("{")[0].strip()
            passes = ",".join(p for p in (bind, "" if first == "canonicalize" else "canonicalize", cls.pipeline) if p)
        tmp = tempfile.TemporaryDirectory(prefix="lepton-onnx-backend-")
        out = f"{tmp.name}/artifact"
        driver.optimize(model, passes=passes, backend=cls.lepton_backend, output=out, target=cls.target,
                        reproducer_dir=None, **cls.backend_options)
        return runtime.load(out), tmp

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> LeptonRep:
        super().prepare(model, device, **kwargs)
        inits = {t.name for t in model.graph.initializer}
        input_names = [i.name for i in model.graph.input if i.name not in inits]
        output_names = [o.name for o in model.graph.output]
        if cls._needs_static_shape_values():
            import lepton_ir
            from lepton_ir.analysis import shape_determining_inputs

            graph = lepton_ir.load(model.SerializeToString()).graph
            rank = {v.name: (len(v.shape.dims) if v.shape is not None else None) for v in graph.inputs}
            # bind-inputs takes scalars and 1-D values (what shapes, axes and sizes are).
            specialize = [n for n in shape_determining_inputs(graph) if rank.get(n) in (None, 0, 1)]
            if specialize:
                return LeptonRep(None, input_names, output_names, None, backend=cls, model=model,
                                 specialize=specialize)
        runner, tmp = cls._compile(model)
        return LeptonRep(runner, input_names, output_names, tmp)

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any) -> tuple[Any, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return Device(device).type == DeviceType.CPU


def backend_for(backend: str = "onnx", pipeline: str = "canonicalize", target: str | None = None,
                specialize_shape_inputs: bool | None = None,
                options: Mapping[str, Any] | None = None) -> type[LeptonBackend]:
    """A LeptonBackend subclass bound to a Lepton backend name, a pipeline and backend options.

    `specialize_shape_inputs`: None (default) follows the backend's `needs_static_shape_values`;
    True/False forces lazy specialisation on shape-determining inputs on or off.
    `options`: the Lepton backend's options (`lepton.optimize`'s keyword options, `_` or `-` in
    names), e.g. `{"fallback": False}` for tvm-cpu without ONNX Runtime stages; checked here, so
    an unknown option or a bad value fails at once rather than on the first `prepare()`.
    """
    opts = dict(options or {})
    if opts:
        from lepton_backends import get_backend

        get_backend(backend)().parse_options({k.replace("_", "-"): v for k, v in opts.items()})
    shown = ",".join(f"{k}={v}" for k, v in opts.items())
    name = f"Lepton[{backend}|{pipeline}" + (f"|{shown}" if shown else "") + "]"
    return type(name, (LeptonBackend,), {"lepton_backend": backend, "pipeline": pipeline, "target": target,
                                         "specialize_shape_inputs": specialize_shape_inputs,
                                         "backend_options": opts})


def run_node_case(backend: type[LeptonBackend], model: onnx.ModelProto, inputs: Sequence[Any]) -> list[Any]:
    """Prepare and run one conformance case; outputs as a list."""
    return list(backend.prepare(model).run(list(inputs)))
