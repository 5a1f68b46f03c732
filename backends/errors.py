"""Errors of lepton_backends (a module of its own so that artifact.py and base.py share them)."""

from lepton_ir import LeptonError


class BackendError(LeptonError):
    """A backend cannot be found, configured, or cannot compile the model."""


class BackendOptionError(BackendError):
    """A backend option is unknown or has a bad value (a usage error: `lepton-opt` exits 2)."""
