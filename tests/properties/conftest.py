"""Hypothesis profiles for the property-based tests.

``default``: a few examples per property, derandomized (the same examples on every run, so CI is
deterministic), no deadline (a shared 2-core machine has noisy timings); the whole directory runs
in well under a minute. ``slow``: many more examples, still derandomized; ``explore``: many
examples from a fresh random seed each run (to search for new counterexamples). Select with
the environment variable ``HYPOTHESIS_PROFILE`` (``default``, ``slow`` or ``explore``), e.g.::

    HYPOTHESIS_PROFILE=slow python -m pytest tests/properties -q
"""

import os

from hypothesis import HealthCheck, settings

_COMMON = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
    "database": None,  # nothing written into the work tree; failures print their reproducer
}
settings.register_profile("default", max_examples=12, derandomize=True, **_COMMON)
settings.register_profile("slow", max_examples=400, derandomize=True, **_COMMON)
settings.register_profile("explore", max_examples=1000, derandomize=False, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
