"""Legalization passes: rewrite ops a backend lacks into ops it has, following the ONNX spec exactly.

`legalize` runs them all; backends (e.g. TVM's) run it before lowering.
"""

from . import contrib_ops, conv_transpose_d2s, expand_functions, integer_ops, legalize, rnn  # noqa: F401
