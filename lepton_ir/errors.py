"""The error hierarchy. Every error a user can cause is a `LeptonError` with a one-line message.

The CLI prints `str(error)` and exits non-zero for these; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class LeptonError(Exception):
    """Base class of every user-facing error. `str(err)` is one line naming the problem."""

    def __str__(self) -> str:
        # One line, always: messages built from user data (names, paths) must not break it.
        return " ".join(super().__str__().split())


class ModelLoadError(LeptonError):
    """The input is not a loadable ONNX model (malformed protobuf, unreadable file, bad graph)."""


class ExternalDataError(ModelLoadError):
    """An external-data reference is unsafe (leaves the model folder) or inconsistent."""


class ModelTooLargeError(ModelLoadError):
    """A declared size (shape, tensor, file) is beyond what can be held or is inconsistent."""


class GraphCycleError(ModelLoadError):
    """The graph's nodes form a cycle, so no execution order exists."""


class VerifyError(LeptonError):
    """The IR violates an invariant; the message says where (graph, node, value)."""


class TextParseError(LeptonError):
    """The text form could not be parsed; the message gives line and column."""


class UnsupportedError(LeptonError):
    """A construct is valid but not supported by the component asked to handle it."""


class RegionError(LeptonError):
    """A region bounded by values cannot be extracted or replaced (not closed, not replaceable)."""
