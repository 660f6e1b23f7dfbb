"""A pipeline spec `NAME[@POINT]`, parsed once into an object: the selector, its insertion point and
whether it runs the seed paper's patch-level form. Every error about a spec is raised here, as one
QGSAError line.

    dense, dense-bypass, qgsa, random, norm   the seed paper's pipelines (qgsa/random/norm: single patches
                                               after the encoder, through the QGSA module's projection)
    NAME                                       any other registered selector at its default point
    NAME@POINT                                 a selector at post-vision, vision:L, lm:K[,K2,...] or input,
                                               keeping whole visual tokens (e.g. random@vision:4, fastv@lm:2)
`bind` resolves the default point against a model's depths and checks the layers exist.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import qgsa_bench.qgsa.selectors  # noqa: F401  (registers qgsa and qgsa-vision)
import qgsa_bench.selectors  # noqa: F401  (registers the built-in selectors)
from qgsa_bench import QGSAError
from qgsa_bench.selectors.base import Point, Selector, parse_point
from qgsa_bench.selectors.registry import REGISTRY, selector_class

POINT_EXAMPLE = "SELECTOR@POINT (e.g. random@vision:4, fastv@lm:2)"


@dataclass(frozen=True)
class Spec:
    """`text`: the spec as typed (the label in every results row); `point`: None until bound to a model
    (the selector's default); `patches`: the seed paper's patch-level form."""

    text: str
    selector: Selector
    point: Point | None
    patches: bool = False

    @property
    def name(self) -> str:
        return self.text

    @property
    def is_dense(self) -> bool:
        """The model's own path (nothing selected, every token through the connector)."""
        return self.selector.keeps_all and not self.patches

    def reads_checkpoint(self, k) -> bool:
        """Whether a QGSA checkpoint changes this spec's run: it scores with the module, its patches go
        through the module's projection (the paper's patch-level form), or, without a fixed k, f_comp(q)
        gives its budget (never for dense or global-only, which take no budget)."""
        budget_free = self.selector.keeps_all or self.selector.keeps_no_tiles
        return self.selector.uses_module or self.patches or (k is None and not budget_free)

    def bind(self, vision_depth: int, lm_depth: int) -> "Spec":
        """This spec with its insertion point resolved and checked against a model's depths."""
        point = self.point or self.selector.default_point(vision_depth, lm_depth)
        if point.kind == "vision" and not 1 <= point.layers[0] < vision_depth:
            raise QGSAError(f"insertion point {point} is outside the vision encoder: this model runs "
                            f"{vision_depth} vision layers, so use vision:1 .. vision:{vision_depth - 1} "
                            f"(post-vision is after the last)")
        if point.kind == "lm" and not all(1 <= K < lm_depth for K in point.layers):
            raise QGSAError(f"insertion point {point} is outside the language model: it has {lm_depth} layers, "
                            f"so use lm:1 .. lm:{lm_depth - 1}")
        return replace(self, point=point)

    @property
    def at_tiles(self) -> bool:
        """Whether it chooses tiles of a split image (insertion point `tiles`, bound or by default)."""
        return (self.point.kind if self.point else self.selector.points[0]) == "tiles"

    def where(self) -> str:
        """Where the selection sits, as tables show it."""
        if self.selector.keeps_all:
            return "none"
        if self.patches:
            return "post-vision (patches, QGSA module projection)"
        return str(self.point) if self.point else "default"


def parse_spec(text: str) -> Spec:
    """`NAME[@POINT]` -> Spec. Raises QGSAError for an unknown name or point, or a selector placed where it
    cannot sit."""
    if isinstance(text, Spec):
        return text
    name, at, where = text.partition("@")
    if not at:
        if name not in REGISTRY:
            raise QGSAError(f"unknown pipeline '{name}': use one of {', '.join(REGISTRY)} or {POINT_EXAMPLE}")
        selector = REGISTRY[name]()
        return Spec(text, selector, Point("post-vision") if selector.patch_form else None, selector.patch_form)
    selector = selector_class(name)()
    if selector.keeps_all:
        raise QGSAError(f"'{name}' selects nothing, so it has no insertion point: give --pipelines {name}")
    point = parse_point(where)
    selector.check_point(point)
    return Spec(text, selector, point)


def parse_specs(texts) -> tuple[Spec, ...]:
    """Several specs, each parsed once (the first bad one raises)."""
    return tuple(parse_spec(t) for t in texts)


def check_options(specs, k=None, checkpoint=None, budget_from: str = "--k") -> None:
    """An option is applied to a pipeline or refused, never dropped: raises QGSAError (one line saying what
    to drop or add) for a budget `k` when every spec keeps all tokens, or a `checkpoint` that no spec reads
    (`Spec.reads_checkpoint`). `k`: the fixed budget (None: f_comp(q) gives it); `budget_from`: the option
    that fixed it (sweep-budget: --budgets/--shares)."""
    names = ", ".join(s.text for s in specs)
    one = len(specs) == 1
    if k is not None and budget_from == "--k" and all(s.selector.keeps_all for s in specs):
        raise QGSAError(f"--k is a selector's budget, but {names} keep{'s' if one else ''} every "
                        f"visual token: drop --k, or add a selector pipeline")
    if checkpoint and not any(s.reads_checkpoint(k) for s in specs):
        if k is None:
            why = f"{names} keep{'s' if one else ''} every visual token: drop --checkpoint, or add a selector pipeline"
        else:
            drop_k = "drop --k, " if budget_from == "--k" else ""
            why = (f"{names} at the budget{'' if one else 's'} {budget_from} fixes never read{'s' if one else ''} "
                   f"it: drop --checkpoint, {drop_k}or add a qgsa pipeline")
        raise QGSAError(f"--checkpoint is read by QGSA's pipelines and, where no budget is fixed, by f_comp for "
                        f"every selector's budget; {why}")
