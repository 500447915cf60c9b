"""Hypothesis profiles: ``ci`` (default, >= 200 examples), ``long`` (2,000) and ``dev`` (quick).

Select one with ``HYPOTHESIS_PROFILE=long pytest``. Imported by ``strategies``, so every test
module that uses hypothesis gets the same profile.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = {
    # A real wandb run sits behind most examples: wall time varies with the machine's load.
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}

settings.register_profile("ci", max_examples=200, stateful_step_count=30, **_COMMON)
settings.register_profile("long", max_examples=2_000, stateful_step_count=50, **_COMMON)
settings.register_profile("dev", max_examples=30, stateful_step_count=20, **_COMMON)

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "").strip() or "ci"
settings.load_profile(PROFILE)
