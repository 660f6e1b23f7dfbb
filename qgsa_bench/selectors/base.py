"""The selector interface: what an insertion point offers a selector, and what a selector returns.

Insertion points (DESIGN.md §1):
    vision:L     after vision layer L (1 <= L < depth): dropped patches skip the remaining layers
    post-vision  after the encoder, before the connector (QGSA's place in the paper)
    lm:K         before LM layer K (after K layers, 1 <= K < depth): later layers and their KV cache hold
                 only the kept visual tokens, at their original positions
    input        before the encoder (downsampling: the whole image at a lower resolution)
    tiles        before the encoder, on an image split into tiles (models/views.py): which tiles are encoded
                 at all; the global view always is (selectors/tiles.py; the budget counts tiles)
A selector keeps whole *units*: the patches of one dense visual token (s x s patches for Idefics3's pixel
shuffle, one patch for LLaVA), so k kept units are exactly k visual tokens reaching the LM, each the
token the dense model would build from them (in the LM: one unit = one visual token). A budget k is
therefore counted in visual tokens reaching the LM, whatever the insertion point.

Granularity: `token` (whole units, as above) everywhere; the seed paper's pipelines (`qgsa`, `random`,
`norm` typed without `@`, and `dense-bypass`) select single *patches* after the encoder and project them
with the QGSA module (`patch`). The same selector class serves both: the run hands it patches or units.
Selectors register themselves by the names users type (`registry.register`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from qgsa_bench import QGSAError
from qgsa_bench.selectors.selection import Selection, topk_selection

POINT_KINDS = ("tiles", "input", "vision", "post-vision", "lm")


@dataclass(frozen=True)
class Point:
    """An insertion point: kind in POINT_KINDS, layers for vision (one) and lm (one or more, ascending)."""

    kind: str
    layers: tuple[int, ...] = ()

    def __str__(self) -> str:
        return self.kind if not self.layers else f"{self.kind}:{','.join(map(str, self.layers))}"


def parse_point(text: str) -> Point:
    """'post-vision', 'input', 'tiles', 'vision:L', 'lm:K' or 'lm:K1,K2,...' (several stages, for pdrop/sparsevlm)."""
    kind, _, rest = text.strip().partition(":")
    if kind not in POINT_KINDS or (kind in ("vision", "lm")) != bool(rest):
        raise QGSAError(f"unknown insertion point '{text}': use post-vision, input, tiles, vision:L or lm:K "
                        "(lm:K1,K2,... for several stages)")
    try:
        layers = tuple(int(x) for x in rest.split(",")) if rest else ()
    except ValueError:
        raise QGSAError(f"insertion point '{text}': layers must be integers, e.g. vision:4 or lm:2") from None
    if kind == "vision" and len(layers) != 1:
        raise QGSAError(f"insertion point '{text}': the vision encoder takes one layer (vision:L)")
    if list(layers) != sorted(set(layers)):
        raise QGSAError(f"insertion point '{text}': give the layers once each, ascending")
    return Point(kind, layers)


@dataclass
class SelectState:
    """What an insertion point offers. n units; features (B, n, d) one vector per unit: at vision:L the mean
    of the unit's hidden states, at post-vision the mean of its final patch features, in the LM the
    visual token's hidden state. `valid` (B, n): the unit exists (in the LM: not padding, not pruned)."""

    point: Point
    features: torch.Tensor  # (B, n, d)
    valid: torch.Tensor  # (B, n) bool
    q: torch.Tensor | None = None  # (B, d_q) question embedding (mean-pooled LM input embeddings)
    attention: torch.Tensor | None = None  # (B, n) attention each unit receives (the selector's `attention`)
    text_attention: torch.Tensor | None = None  # (B, T, n) text tokens' attention to units (sparsevlm)
    text_valid: torch.Tensor | None = None  # (B, T) bool
    patches: torch.Tensor | None = None  # (B, n, s^2, d_v) the units' patches (visionzip's merging)
    generator: torch.Generator | None = None
    module: object | None = None  # the QGSA module (qgsa-vision)
    project: Callable[[torch.Tensor], torch.Tensor] | None = None  # units' patches -> visual tokens
    cache: dict = field(default_factory=dict)  # lazily computed things a selector may share with the run


class Selector:
    """Base class. `name`: what users type; `paper`: where the method is described; `points`: the insertion
    point kinds it can sit at; `attention`: what attention it needs computed ('received' in the vision
    encoder, 'last' = the last prompt token's in the LM, 'text' = every question token's in the LM).
    `patch_form`: typed without `@`, the selector runs the seed paper's patch-level pipeline (post-vision,
    single patches through the QGSA module's projection); `keeps_all`: nothing is dropped (dense,
    dense-bypass); `uses_module`: it scores with the QGSA module (its checkpoint matters)."""

    name = ""
    paper = ""
    points: tuple[str, ...] = ()
    attention: str | None = None
    question_guided = False
    trainable = False
    patch_form = False
    keeps_all = False
    uses_module = False
    keeps_no_tiles = False  # at `tiles`: keeps no tile and takes no budget (global-only)
    # the other insertion points whose QGSA checkpoints score the very features this selector's module reads
    # (qgsa-tiles: the global view's patch features after the encoder, what a post-vision module learned on)
    checkpoint_points: tuple[str, ...] = ()

    def default_point(self, vision_depth: int, lm_depth: int) -> Point:
        return Point(self.points[0])

    def check_point(self, point: Point) -> None:
        if point.kind not in self.points:
            raise QGSAError(f"selector '{self.name}' cannot sit at {point}: it sits at "
                            f"{' or '.join(p + (':L' if p == 'vision' else ':K' if p == 'lm' else '') for p in self.points)}")
        if point.kind == "lm" and len(point.layers) > 1 and not self.multi_stage:
            raise QGSAError(f"selector '{self.name}' prunes at one LM layer: give lm:K")

    multi_stage = False

    def scores(self, state: SelectState) -> torch.Tensor:
        """(B, n) higher = keep. Selectors that are not score-then-top-k override `select` instead."""
        raise NotImplementedError

    def select(self, state: SelectState, k: torch.Tensor) -> Selection:
        """k (B,) units to keep per sample -> Selection over the n units (raster order, padded to max k)."""
        scores = self.scores(state).float()
        scores = scores.masked_fill(~state.valid, float("-inf"))
        return topk_selection(scores, k)


def scaled_cuts(layers_of_32: tuple[int, ...], depth: int) -> tuple[int, ...]:
    """A paper's cut layers for a 32-layer LM scaled to `depth` layers, each within 1..depth-1, once each."""
    return tuple(sorted({max(1, min(depth - 1, round(depth * K / 32))) for K in layers_of_32}))


def check_budget(k: torch.Tensor, n: torch.Tensor | int, where: str, unit: str = "visual tokens") -> None:
    """Every sample's budget within [1, n]: one error that says the allowed range (`unit`: what it counts)."""
    n_min = int(n.min()) if torch.is_tensor(n) else int(n)
    if bool((k < 1).any()) or bool((k > n_min).any()):
        bad = int(k.max()) if bool((k > n_min).any()) else int(k.min())
        raise QGSAError(f"budget {bad} {unit} is impossible {where}: pick 1 <= budget <= {n_min}")
