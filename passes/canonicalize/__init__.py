"""Canonicalization passes: cleanup that every pipeline starts with. One pass per module."""

from . import (bind_inputs, canonicalize, cse, dce, fold_constants, fold_if, inline_functions, remove_noops,  # noqa: F401
               simplify_shapes)
