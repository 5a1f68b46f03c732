"""Shared test configuration: the hypothesis profiles `lepton-ci` (default) and `lepton-deep`.

Select one with `--hypothesis-profile=lepton-deep` or `HYPOTHESIS_PROFILE=lepton-deep`.
"""

import os

from hypothesis import settings

from lepton_passes.testing import register_profiles

register_profiles()
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "lepton-ci"))
