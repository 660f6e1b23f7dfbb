"""The QGSA method: patch scorer, complexity estimator, differentiable selector (seed section 3)."""

from qgsa_bench.qgsa.module import QGSAModule

__all__ = ["QGSAModule"]
