"""pytest plugin (entry point `pytest11`, installed with Lepton): hypothesis profiles for every
test suite that property-tests Lepton passes, plugin authors' suites included.

* Registers the profiles `lepton-ci` (25 examples, derandomized: a red build is reproducible) and
  `lepton-deep` (300 examples) as soon as pytest loads its plugins, so that
  `--hypothesis-profile=lepton-deep` works in any project without a conftest.py.
* `HYPOTHESIS_PROFILE=NAME` selects a profile (hypothesis itself only reads the command line).
  A name that is not registered is a usage error naming the known profiles, never silently the
  default: a CI job asking for `lepton-deep` and getting 25 examples would prove less than it says.
  The command-line option wins when both are given and differ (with a warning saying so).
* It does not load a profile otherwise: other projects' hypothesis settings are left alone
  (`check_pass` falls back to `lepton-ci` by itself).

This module lives in lepton_ir (the layer every other package imports) and imports nothing of
Lepton but hypothesis, so loading it costs nothing in suites that never use Lepton.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import pytest

PROFILES = ("lepton-ci", "lepton-deep")
ENV = "HYPOTHESIS_PROFILE"

_done = False


def register_profiles() -> None:
    """Register `lepton-ci` and `lepton-deep` with hypothesis (idempotent)."""
    global _done
    if _done:
        return
    from hypothesis import HealthCheck, settings

    common: dict[str, Any] = dict(deadline=None, print_blob=True, suppress_health_check=[
        HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    settings.register_profile("lepton-ci", max_examples=25, derandomize=True, **common)
    settings.register_profile("lepton-deep", max_examples=300, **common)
    _done = True


def known_profiles() -> list[str]:
    """Names of every registered hypothesis profile."""
    from hypothesis import settings

    return sorted(getattr(settings, "_profiles", {}) or PROFILES)


def select_profile(name: str | None, option: str | None = None) -> str | None:
    """Load the profile `name` (from the environment), unless the command line chose `option`.

    Raises pytest.UsageError for a name hypothesis does not know. Returns the profile loaded
    (None when nothing was asked for).
    """
    from hypothesis import settings
    from hypothesis.errors import InvalidArgument

    register_profiles()
    if not name:
        return None
    if option and option != name:
        warnings.warn(f"{ENV}={name} ignored: --hypothesis-profile={option} was given", stacklevel=2)
        return option
    try:
        settings.get_profile(name)
    except InvalidArgument:
        raise pytest.UsageError(f"{ENV}={name!r} is not a hypothesis profile; known: "
                                f"{', '.join(known_profiles())}") from None
    settings.load_profile(name)
    return name


# Registered at import: hypothesis's own plugin loads `--hypothesis-profile` in its
# pytest_configure, which may run before ours, and the name must exist by then.
register_profiles()


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """Apply HYPOTHESIS_PROFILE (after hypothesis's plugin, so a bad name is reported by us)."""
    option = None
    try:
        option = config.getoption("hypothesis_profile")
    except ValueError:  # hypothesis's plugin is not active (-p no:hypothesispytest)
        pass
    select_profile(os.environ.get(ENV), option)
