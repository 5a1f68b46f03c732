"""Shared test configuration: the hypothesis profiles `lepton-ci` (default) and `lepton-deep`.

Select one with `--hypothesis-profile=lepton-deep` or `HYPOTHESIS_PROFILE=lepton-deep`.
"""

import os

from hypothesis import settings

from lepton_passes.testing import register_profiles

register_profiles()
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "lepton-ci"))


def pytest_collection_modifyitems(config, items):
    """`slow` suites stay out of the default run (pyproject's marker text promises it): a test
    marked slow is skipped, with the command that runs it, unless `-m` names `slow`. Done here
    once rather than by a check inside each slow test, which one forgotten check turns into a
    90-minute CI hang."""
    import pytest

    if "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow suite: run with `pytest -m slow`")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
