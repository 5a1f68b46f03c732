"""Canonicalization passes: cleanup that every pipeline starts with. One pass per module."""

from . import (bind_inputs, canonicalize, cse, dce, fold_constants, fold_if, inline_functions,  # noqa: F401
               pin_input_shapes, remove_noops, simplify_shapes)
