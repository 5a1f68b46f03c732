"""Quantization passes: `quant8` (static int8 QDQ), `quant8-dynamic`, `fp16`, `qdq-to-qoperator`,
`qdq-to-integer`, and the accuracy report (`quant_report`, `format_report`). See docs/quantization.md."""

from .dynamic import Quant8Dynamic
from .fp16 import Fp16
from .qdq_to_integer import QdqToInteger
from .qoperator import QdqToQOperator
from .quant8 import Quant8
from .report import format_report, quant_report

__all__ = ["Quant8", "Quant8Dynamic", "Fp16", "QdqToQOperator", "QdqToInteger", "quant_report", "format_report"]
