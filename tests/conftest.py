"""Shared pytest configuration.

Hypothesis profile "thorough" (owned by the implicit-layer tests, which read it
in tests/implicit/test_properties.py): run the property tests with at least 200
examples each, e.g. ``python -m pytest tests/implicit/test_properties.py
--hypothesis-profile=thorough``. The default profile keeps CI fast.
"""

from hypothesis import settings

settings.register_profile("thorough", max_examples=200, deadline=None)
