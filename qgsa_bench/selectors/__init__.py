"""Visual-token selectors, one small file each, registered by the names users type (registry.py).

Importing this package registers the built-in selectors; the QGSA method's own (qgsa, qgsa-vision) are
registered by `qgsa_bench.qgsa.selectors`. `run.spec` turns `NAME[@POINT]` into a selector at a point.
"""

from qgsa_bench.selectors import (baselines, dense, divprune, fastv, hired, pdrop, sparsevlm, tiles,  # noqa: F401
                                  visionzip)
from qgsa_bench.selectors.registry import REGISTRY, names, register, selector_class

__all__ = ["REGISTRY", "names", "register", "selector_class"]
