"""Which image input a run gets: the model's own views, or one square view (the paper's form).

One rule for every command that takes a model (ask, eval, grounding, sweep-budget, count-flops, sweep-resolution,
train, lmms-eval):

- `--resolution R` (or sweep-resolution's `--sizes`): one square view of R px, the seed paper's form;
- `--image-splitting` / `--no-image-splitting` (and `--longest-edge N`): the model's own image processor with that
  setting (models/views.py; a pipeline that cannot take split images is then refused, run/tiles.check_views);
- neither (the default): **the model's own processor settings**, as the model runs. For SmolVLM that is image
  splitting on: tiles of 512 px after resizing the longest edge to 2,048 px, plus a global view (1,088 visual
  tokens for a square photo). A model whose own setting does not split (the trained shapes base, `tiny`) or that
  has no processor views (LLaVA) gets one square view of its native size, as before. Where the model splits but
  something in the command takes one view only (the seed paper's patch-level `qgsa`/`random`/`norm`, `downsample`,
  `--allocate`, training at post-vision), every pipeline gets one square view of the native size instead, with
  one warning saying why and how to get the model's own views: one input for every pipeline of a command, so
  that every comparison is on equal inputs.

Every output names the input it used (`describe_input`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterable

from qgsa_bench import QGSAError
from qgsa_bench.models.views import Splitting
from qgsa_bench.run.tiles import check_views


# a tile selector given one square view (ask, eval, lmms-eval): what to change
ONE_VIEW_TILES = ("chooses among the tiles of a split image, and this run is one square view: drop --resolution (the "
                  "model's own views are the default where its processor splits) or add --image-splitting, or use a "
                  "selector of one view")


def check_tile_options(specs: Iterable, k: int | None = None, split: bool | None = None,
                       resolution: int | None = None, needs_k: bool = True) -> None:
    """Before the model loads: the options a tile selector (insertion point `tiles`, run.spec.Spec.at_tiles) cannot
    take, from the options alone. `split` False (--no-image-splitting) or `resolution` (--resolution R) give one
    view, where it has no tiles to choose; without `k` (`needs_k`: ask and eval, whose --k is its budget in tiles)
    it has no budget (f_comp predicts visual tokens, not tiles). Raises QGSAError naming the first such spec.
    What depends on the image or the model (T above the image's tiles) is checked when they are known."""
    tiles = [spec for spec in specs if spec.at_tiles]
    if not tiles:
        return
    name = tiles[0].text
    if resolution is not None or split is False:
        given = f"--resolution {resolution}" if resolution is not None else "--no-image-splitting"
        raise QGSAError(f"{name} chooses among the tiles of a split image, and {given} gives one view: drop {given} "
                        f"(the model's own views are the default where its processor splits), or use a selector of "
                        f"one view")
    budgeted = [spec for spec in tiles if not spec.selector.keeps_no_tiles]
    if needs_k and k is None and budgeted:
        raise QGSAError(f"{budgeted[0].text} needs a budget in tiles: --k T, the tiles encoded besides the global "
                        f"view (1 .. the image's tiles: 16 for a square photo on SmolVLM)")


def one_view_reasons(adapter, specs: Iterable = (), extra: Iterable[str] = ()) -> list[str]:
    """What in a command takes one view only: each pipeline spec (run.spec.Spec; a selector named without a
    point at its default point on `adapter`'s model, its layers checked later by Spec.bind) that split images
    refuse (run/tiles.check_views), by its text, then the `extra` reasons as given (e.g. "--allocate")."""
    reasons = []
    for spec in specs:
        if spec.point is None:
            spec = replace(spec, point=spec.selector.default_point(adapter.vision_depth, adapter.lm_depth))
        try:
            check_views(spec)
        except QGSAError:
            reasons.append(spec.text)
    return [*reasons, *extra]


def own_views_split(adapter) -> bool:
    """Whether the model's own processor splits images (SmolVLM's presets and checkpoints: yes; the shapes
    base, `tiny`, LLaVA: no)."""
    own = adapter.loaded.splitting
    return bool(own is not None and own.split)


def choose_input(adapter, resolution: int | None = None, split: bool | None = None,
                 longest_edge: int | None = None, specs: Iterable = (), extra: Iterable[str] = (),
                 warn: Callable[[str], None] | None = None, one_view: str | None = None) -> Splitting | None:
    """The input of one command (module docstring): a Splitting (the model's processor makes the views) or
    None (one square view of `resolution` px, or of the model's native size when `resolution` is None).

    `split` / `longest_edge`: the user's --image-splitting/--no-image-splitting and --longest-edge (None: not
    given; the commands' configurations refuse them beside --resolution); `specs`: the command's pipelines
    (run.spec.Spec) and `extra`: anything else that takes one view only (the default then falls back to one
    view, with one `warn` line naming it as `one_view` says, default "one square view of the native size").
    Raises QGSAError for settings the processor or the tokenizer cannot take
    (adapter.splitting), and for --longest-edge where the default falls back to one view."""
    if resolution is not None:
        return None
    if split is not None:
        return adapter.splitting(split, longest_edge)
    if not own_views_split(adapter):
        if longest_edge is not None:
            adapter.splitting(None, longest_edge)  # raises: no splitting (or a family without views)
        return None
    reasons = one_view_reasons(adapter, specs, extra)
    if reasons:
        if longest_edge is not None:
            raise QGSAError(f"--longest-edge {longest_edge} tiles the image, and {reasons[0]} takes one view only: "
                            f"drop --longest-edge, or use a selector of split images (a tile selector, or "
                            f"NAME@post-vision, NAME@vision:L, NAME@lm:K)")
        if warn:
            one_view = one_view or f"one square view of {adapter.image_size} px (the paper's form)"
            warn(f"{reasons[0]} takes one view only, so every pipeline gets {one_view}, not this model's own views "
                 f"(tiles + a global view). For those: dense, a tile selector or a selector at post-vision, "
                 f"vision:L or lm:K (sweep-resolution: with --longest-edge); --resolution R (sweep-resolution: "
                 f"--sizes) asks for one view without this warning")
        return None
    return adapter.splitting(None, longest_edge)


def describe_input(splitting: Splitting | None, resolution: int) -> str:
    """What every output says about its image input: the processor's settings, or one square view of
    `resolution` px."""
    if splitting is None:
        return f"one square view of {resolution} px (the paper's form)"
    return f"the model's processor: {splitting.describe()}"
