"""lepton_backends: the Backend interface, its registry, artifacts, and the built-in backends.

`get_backend("onnx")().compile(model, "out/", pipeline_text=...)` writes an artifact folder
atomically; `compile_stages([...], "out/")` writes a multi-stage one. Other backends (backends/tvm)
register the same way; plugins use the entry-point group `lepton.backends`. Artifacts:
`lepton_backends.artifact` (one manifest format, one writer, one verifying reader).
"""

from .artifact import MANIFEST, atomic_dir, read_manifest, sha256_file, stage_dir, stage_view
from .base import (Backend, BackendError, NoOptions, StageSpec, compile_stages, get_backend, list_backends,
                   register_backend)

__all__ = ["Backend", "BackendError", "NoOptions", "StageSpec", "compile_stages", "register_backend", "get_backend",
           "list_backends", "atomic_dir", "sha256_file", "MANIFEST", "read_manifest", "stage_dir", "stage_view"]
