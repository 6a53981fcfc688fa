"""Optional frameworks: the DEQ layers that need one, and the error when it is missing.

``implicit.flax`` needs Flax and ``implicit.equinox`` needs Equinox. Each is an extra of
the package (``pip install -e '.[flax]'``), so ``import implicit`` never imports them:
the layers' modules import their framework themselves and raise :func:`missing` if they
cannot.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

FRAMEWORKS: Mapping[str, str] = MappingProxyType({"flax": "Flax", "equinox": "Equinox"})
"""The submodules of ``implicit`` that need an optional framework (named like their
extra and their package) and the framework's name."""


def missing(extra: str) -> ImportError:
    """The error ``implicit.<extra>`` raises when its framework cannot be imported: it names
    the extra to install."""
    return ImportError(
        f"implicit.{extra} needs {FRAMEWORKS[extra]}: pip install -e '.[{extra}]' "
        f"(or pip install {extra})"
    )
