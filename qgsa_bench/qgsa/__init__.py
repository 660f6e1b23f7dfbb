"""The QGSA method: patch scorer, complexity estimator, differentiable selector (seed section 3)."""

from qgsa_bench.qgsa.module import QGSAModule
from qgsa_bench.qgsa.selector import Selection

__all__ = ["QGSAModule", "Selection"]
