"""Canonicalization passes: cleanup that every pipeline starts with. One pass per module."""

from . import canonicalize, cse, dce, fold_constants, inline_functions, remove_noops, simplify_shapes  # noqa: F401
