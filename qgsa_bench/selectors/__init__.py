"""Selectors keyed by the names users type (one small file each), and pipeline specs `NAME[@POINT]`.

The paper pipelines of pipeline.py (dense, dense-bypass, qgsa, random, norm at post-vision, patch-level
through the QGSA module's projection) keep their names; any selector here can be asked for at another
insertion point with `NAME@POINT` (e.g. `random@vision:4`, `fastv@lm:3`, `pdrop@lm:2,4`).
"""

from __future__ import annotations

from dataclasses import dataclass

from qgsa_bench import QGSAError
from qgsa_bench.selectors.base import Point, Selector, parse_point
from qgsa_bench.selectors.baselines import Downsample, NormUnits, RandomUnits
from qgsa_bench.selectors.divprune import DivPrune
from qgsa_bench.selectors.fastv import FastV
from qgsa_bench.selectors.pdrop import PyramidDrop
from qgsa_bench.selectors.qgsa_vision import QGSAVision
from qgsa_bench.selectors.sparsevlm import SparseVLM
from qgsa_bench.selectors.visionzip import VisionZip

SELECTORS: dict[str, type[Selector]] = {cls.name: cls for cls in (
    FastV, PyramidDrop, SparseVLM, VisionZip, DivPrune, Downsample, QGSAVision, RandomUnits, NormUnits)}
# Names that are selectors here only (random and norm without @ stay the paper's patch-level pipelines).
SELECTOR_PIPELINES = ("fastv", "pdrop", "sparsevlm", "visionzip", "divprune", "downsample", "qgsa-vision")


@dataclass(frozen=True)
class Spec:
    """A selector at an insertion point (the run resolves the default point against the model's depth)."""

    selector: Selector
    point: Point | None  # None: the selector's default

    @property
    def name(self) -> str:
        return self.selector.name


def parse_spec(text: str) -> Spec:
    name, at, where = text.partition("@")
    if name not in SELECTORS:
        raise QGSAError(f"unknown selector '{name}': use one of {', '.join(SELECTORS)}")
    selector = SELECTORS[name]()
    if not at:
        return Spec(selector, None)
    point = parse_point(where)
    selector.check_point(point)
    return Spec(selector, point)


def is_selector_spec(text: str) -> bool:
    return "@" in text or text in SELECTOR_PIPELINES


__all__ = ["Point", "SELECTORS", "SELECTOR_PIPELINES", "Selector", "Spec", "is_selector_spec", "parse_point",
           "parse_spec"]
