"""Import jaxopt without its one import-time notice.

jaxopt warns on import that it is no longer maintained. The toolkit keeps jaxopt's
solvers as the design's alternatives and knows that; every import of jaxopt in the
project goes through :func:`import_jaxopt`, which silences exactly that message and no
other warning.
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

UNMAINTAINED_MESSAGE = "JAXopt is no longer maintained"


def import_jaxopt(submodule: str = "") -> ModuleType:
    """``jaxopt`` (or ``jaxopt.<submodule>``), imported with only its unmaintained notice hidden."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=UNMAINTAINED_MESSAGE, category=DeprecationWarning
        )
        module = importlib.import_module("jaxopt")
        return importlib.import_module(f"jaxopt.{submodule}") if submodule else module
