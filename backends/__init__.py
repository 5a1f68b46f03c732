"""lepton_backends: the Backend interface, its registry, and the built-in `onnx` backend.

`get_backend("onnx")().compile(model, "out/", pipeline_text=...)` writes an artifact folder
atomically. Other backends (backends/tvm) register the same way; plugins use the entry-point group
`lepton.backends`.
"""

from .base import (MANIFEST, Backend, BackendError, atomic_dir, get_backend, list_backends, register_backend,
                   sha256_file)

__all__ = ["Backend", "BackendError", "register_backend", "get_backend", "list_backends", "atomic_dir",
           "sha256_file", "MANIFEST"]
