"""lepton_passes: the Pass API, the registry, textual pipelines and the PassManager.

Write a pass as a frozen dataclass (fields are its options) with a kebab-case `name`, register it
with `@register_pass` (or the `lepton.passes` entry-point group for plugins), and run pipelines
given as text: `PassManager("fuse,fixpoint(canonicalize,cse)").run(model)`. See docs/pipelines.md.
"""

from .base import Pass, PassError, PassInputError, get_pass, list_passes, option_name, pass_origin, register_pass
from .instruments import (DifferentialInstrument, DifferentialMismatchError, Instrument, PrintIRInstrument,
                          ReproducerInstrument, TimingInstrument, VerifyInstrument, make_inputs, run_onnxruntime)
from .manager import (REWRITE_LOG, PassChangedMismatchError, PassChangedMismatchWarning, PassFailedError,
                      PassManager, PassRecord, RunReport, debug_rewrites, debug_rewrites_enabled)
from .pipeline import (Fixpoint, FixpointWarning, Pipeline, PipelineError, describe_options, format_pass,
                       parse_pipeline)

__all__ = [
    "Pass", "PassError", "PassInputError", "register_pass", "get_pass", "list_passes", "option_name", "pass_origin",
    "parse_pipeline", "Pipeline", "Fixpoint", "PipelineError", "FixpointWarning", "format_pass", "describe_options",
    "PassManager", "RunReport", "PassRecord", "PassFailedError", "PassChangedMismatchWarning",
    "PassChangedMismatchError", "debug_rewrites", "debug_rewrites_enabled", "REWRITE_LOG",
    "Instrument", "VerifyInstrument", "PrintIRInstrument", "TimingInstrument", "DifferentialInstrument",
    "DifferentialMismatchError", "ReproducerInstrument", "make_inputs", "run_onnxruntime",
]
