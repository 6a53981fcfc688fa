"""Shared pytest configuration.

Hypothesis profile "thorough" (owned by the implicit-layer tests, which read it
in tests/implicit/test_properties.py): run the property tests with at least 200
examples each, e.g. ``python -m pytest tests/implicit/test_properties.py
--hypothesis-profile=thorough``. The default profile keeps CI fast.

XLA compiles the test programs with its fast-compiling CPU options (the ``XLA_FLAGS``
equivalent of :data:`benchmarks.timing.FAST_COMPILE`, and the older fusion emitters,
:data:`benchmarks.timing.OLDER_CPU_EMITTERS_XLA_FLAG`). Compilation is most of the suite's
time; the tests check values, never speed, and the benchmarks measure with XLA's defaults.
A test whose check depends on rounding compiles its program with
:data:`benchmarks.timing.XLA_DEFAULT_COMPILE`. The flags are read once, when JAX starts its
backend, so they are set here, before any test module runs a computation; a user's own
``XLA_FLAGS`` are kept and come first.
"""

import os

from hypothesis import settings

from benchmarks.timing import FAST_COMPILE_XLA_FLAGS, OLDER_CPU_EMITTERS_XLA_FLAG

_user_flags = os.environ.get("XLA_FLAGS", "")
_suite_flags = [*FAST_COMPILE_XLA_FLAGS.split(), OLDER_CPU_EMITTERS_XLA_FLAG]
os.environ["XLA_FLAGS"] = " ".join([_user_flags] + [
    flag for flag in _suite_flags if flag.split("=")[0] not in _user_flags
]).strip()

settings.register_profile("thorough", max_examples=200, deadline=None)
