"""SmolVLM's own image input: the model's image processor splits an image into tiles plus a global view.

transformers' `Idefics3ImageProcessor` (called here, not copied) resizes the image so that its longest
edge is `longest_edge` (2048 px for SmolVLM-256M/500M; a smaller image is scaled up), cuts it into
`tile` x `tile` tiles (512 px: rows x cols of them) and adds the whole image resized to one tile, the global
view. A square photo becomes 4 x 4 tiles + 1 global view = 17 views, each encoded on its own by the vision
tower and pixel-shuffled into `image_seq_len` visual tokens (64): 1,088 visual tokens. Without splitting
the image is one `tile`-sized view (the global view alone). The prompt names every tile by its place
(Idefics3Processor's layout, rebuilt by `image_prompt` with any number of tokens per view so that a
selector's kept tokens stay under their tile's marker):

    <fake_token_around_image><row_1_col_1><image>*n ... <fake_token_around_image><row_1_col_C><image>*n \\n
    ...                                                                                  (one line per row)
    \\n<fake_token_around_image><global-img><image>*n<fake_token_around_image>
    one view:  <fake_token_around_image><global-img><image>*n<fake_token_around_image>

`Views` carries a batch: only real views (the processor pads a batch to its largest number of views with
empty ones; those are dropped here, so they cost nothing and change nothing), sample by sample, each
sample's tiles in row-major order, then its global view.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from qgsa_bench import QGSAError

FAKE, GLOBAL, IMAGE = "<fake_token_around_image>", "<global-img>", "<image>"
MAX_GRID = 6  # SmolVLM's tokenizer has <row_r_col_c> for r, c <= 6


def tile_token(row: int, col: int) -> str:
    """The marker of the tile in row `row`, column `col` (1-based)."""
    return f"<row_{row}_col_{col}>"


def tile_tokens() -> dict[str, int]:
    """Every tile marker and its id in SmolVLM's tokenizer (row-major from 49153: <row_1_col_1> .. <row_6_col_6>
    = 49188, between <global-img> 49152 and <fake_token_around_image> 49189)."""
    return {tile_token(r, c): 49153 + (r - 1) * MAX_GRID + (c - 1)
            for r in range(1, MAX_GRID + 1) for c in range(1, MAX_GRID + 1)}


@dataclass(frozen=True)
class Splitting:
    """How the model's processor makes views: `split` into `tile`-px tiles after resizing the longest edge to
    `longest_edge` px, or one `tile`-px view. `resample`: PIL's filter number (1: Lanczos, SmolVLM's)."""

    split: bool
    longest_edge: int
    tile: int
    resample: int = 1

    def describe(self) -> str:
        if not self.split:
            return f"one {self.tile}-px view (image splitting off)"
        return f"tiles of {self.tile} px after resizing the longest edge to {self.longest_edge} px, plus a global view"

    def check(self) -> None:
        """Raises QGSAError for a longest edge that is not a positive multiple of the tile size, or more tiles
        per side than the tokenizer has markers for."""
        if self.longest_edge <= 0 or self.longest_edge % self.tile:
            raise QGSAError(f"--longest-edge {self.longest_edge} is not a positive multiple of the tile size "
                            f"{self.tile} px: use one of {', '.join(str(self.tile * i) for i in range(1, 5))}, ...")
        if self.longest_edge // self.tile > MAX_GRID:
            raise QGSAError(f"--longest-edge {self.longest_edge} gives {self.longest_edge // self.tile} tiles per "
                            f"side; the tokenizer marks at most {MAX_GRID}: use at most {self.tile * MAX_GRID}")


@dataclass
class Views:
    """A batch of images as the model's processor gives them.

    pixel_values (M, 3, S, S): every real view of the batch (M = sum of `counts`), float32, normalised;
    counts: views per sample (rows x cols + 1 when split, else 1); grids: (rows, cols) per sample ((0, 0):
    one view); sizes: each image's (height, width) in px as given; splitting: the settings used."""

    pixel_values: torch.Tensor
    counts: list[int]
    grids: list[tuple[int, int]]
    sizes: list[tuple[int, int]]
    splitting: Splitting
    first: list[int] = field(init=False)  # index in M of each sample's first view

    def __post_init__(self):
        self.first = [sum(self.counts[:b]) for b in range(len(self.counts))]

    @property
    def batch(self) -> int:
        return len(self.counts)

    @property
    def size(self) -> int:
        return self.pixel_values.shape[-1]

    def to(self, device, dtype) -> "Views":
        return self.with_pixels(self.pixel_values.to(device, dtype))

    def with_pixels(self, pixel_values: torch.Tensor) -> "Views":
        """The same layout over other pixel values (M, 3, S, S) (a FLOP count's traced copy)."""
        return Views(pixel_values, self.counts, self.grids, self.sizes, self.splitting)

    def scaled_up(self, b: int) -> bool:
        """Whether sample b's image was scaled UP before tiling: split, and its longest side below the longest
        edge (the processor resizes it up to that edge, as SmolVLM's does: a 640 x 480 photo becomes 13 views)."""
        return self.splitting.split and max(self.sizes[b]) < self.splitting.longest_edge

    def stretch(self, b: int) -> float:
        """How much the processor changes sample b's aspect ratio (a unitless factor): (H' / h) / (W' / w), the
        height's scale over the width's, from the image as given (h x w px) to the rows x cols whole tiles it is
        resized to (H' = rows x tile, W' = cols x tile; an unsplit image: its one square view). 1.0: the aspect
        kept; > 1: stretched in height (a 4000 x 100 strip becomes 1 x 4 tiles, 2048 x 512 px: 10.0); < 1: in
        width. SmolVLM's processor rounds each side up to whole tiles without padding (view_boxes), so most
        photos are stretched a little (1920 x 1080: 4 x 3 tiles, 1.33)."""
        h, w = self.sizes[b]
        rows, cols = self.grids[b] if self.counts[b] > 1 else (1, 1)
        return (rows / h) / (cols / w)

    def describe(self, b: int) -> str:
        """Sample b's views in words, e.g. '13 views: 3 x 4 tiles + a global view; the 640x480 image scaled up to a
        longest edge of 2048 px, as the model's processor does', and its `stretch` where it is not within 1 %."""
        h, w = self.sizes[b]
        rows, cols = self.grids[b]
        split = self.counts[b] > 1
        done = []  # what the processor did to the image, said once
        if self.scaled_up(b):
            done.append(f"the {w}x{h} image scaled up to a longest edge of {self.splitting.longest_edge} px")
        stretch = self.stretch(b)
        stretched = abs(stretch - 1) > 0.01
        if stretched:
            into = f"{rows} x {cols} tiles ({cols}:{rows})" if split else "one square view"
            done.append(f"its aspect {w / h:.2f}:1 stretched into {into}, x{max(stretch, 1 / stretch):.2f} in "
                        f"{'height' if stretch > 1 else 'width'}")
        text = f"{self.counts[b]} views: {rows} x {cols} tiles + a global view" if split else "one view"
        if done:
            text += "; " + "; ".join(done) + ", as the model's processor does" + (" (it pads nothing)" * stretched)
        return text

    @property
    def global_rows(self) -> list[int]:
        """Each sample's global view's row in M (its last view)."""
        return [first + n - 1 for first, n in zip(self.first, self.counts)]

    def patch_tiles(self, patch_size: int, device) -> torch.Tensor:
        """(B, N_v) for each patch of a sample's global view the tile holding its centre (`tile_of_patches`);
        -1 throughout for a sample of one view (no tiles)."""
        g = self.size // patch_size
        out = torch.full((self.batch, g * g), -1, dtype=torch.long, device=device)
        for b in range(self.batch):
            if self.counts[b] > 1:
                out[b] = tile_of_patches(self, b, patch_size, device)
        return out

    def view_boxes(self, b: int) -> list[tuple[float, float, float, float]]:
        """Sample b's views as rectangles (x0, y0, x1, y1) in the ORIGINAL image's pixels (the image as given,
        `sizes[b]`), in view order: its tiles row-major, then its global view; one rectangle for an unsplit image.

        Read from what the processor did (`grids[b]`), not re-derived: transformers' Idefics3ImageProcessor
        resizes the WHOLE image (no crop, no pad) to longest edge `longest_edge`, then again to rows x cols whole
        tiles of `tile` px (`resize_for_vision_encoder`: each side rounded up to a multiple of the tile, scaling a
        small image up), and cuts that into exactly rows x cols tiles (`split_images`' unfold); the global view, and
        an unsplit image's one view, is the whole image resized to one tile. Every step maps the whole image onto
        the whole output, so tile (r, c) (0-based) covers x in [c W / cols, (c + 1) W / cols] and y in
        [r H / rows, (r + 1) H / rows] of the W x H original (whatever the intermediate sizes), and the global
        view [0, W] x [0, H]. A view's g x g patches divide its rectangle evenly (`view_patch_boxes`)."""
        h, w = self.sizes[b]
        rows, cols = self.grids[b]
        tiles = [(c * w / cols, r * h / rows, (c + 1) * w / cols, (r + 1) * h / rows)
                 for r in range(rows) for c in range(cols)] if rows else []
        return tiles + [(0.0, 0.0, float(w), float(h))]

    def sample(self, b: int) -> "Views":
        """Sample b alone: its pixel values (n_b, 3, S, S), its grid and size; the same tensors as the processor
        gives for that image alone (it resizes and tiles each image on its own)."""
        return Views(self.pixel_values[self.rows_of(b)], [self.counts[b]], [self.grids[b]], [self.sizes[b]],
                     self.splitting)

    def rows_of(self, b: int) -> slice:
        """Sample b's views in `pixel_values` (its tiles, then its global view)."""
        return slice(self.first[b], self.first[b] + self.counts[b])

    def markers(self, b: int) -> list[str]:
        """Sample b's view markers, in view order: <row_r_col_c> per tile, then <global-img>."""
        rows, cols = self.grids[b]
        return [tile_token(r, c) for r in range(1, rows + 1) for c in range(1, cols + 1)] + [GLOBAL]


def make_views(images, splitting: Splitting, mean, std) -> Views:
    """PIL images -> Views, by transformers' Idefics3ImageProcessor with `splitting` and the model's
    mean/std. Raises QGSAError for settings the processor cannot use (Splitting.check)."""
    from transformers import Idefics3ImageProcessor

    from qgsa_bench.data.types import to_rgb

    splitting.check()
    processor = Idefics3ImageProcessor(
        do_image_splitting=splitting.split, size={"longest_edge": splitting.longest_edge},
        max_image_size={"longest_edge": splitting.tile}, resample=splitting.resample,
        image_mean=list(mean), image_std=list(std))
    rgb = [to_rgb(img) for img in images]
    out = processor(images=[[img] for img in rgb], return_tensors="pt", return_row_col_info=True)
    grids = [(int(r[0]), int(c[0])) for r, c in zip(out["rows"], out["cols"])]
    counts = [r * c + 1 if r else 1 for r, c in grids]
    px = out["pixel_values"]  # (B, V_max, 3, S, S), padded with empty views
    pixel_values = torch.cat([px[b, :n] for b, n in enumerate(counts)]).float()
    return Views(pixel_values, counts, grids, [(img.height, img.width) for img in rgb], splitting)


def image_prompt(markers: list[str], counts: list[int], grid: tuple[int, int]) -> list[str | int]:
    """One image's part of the prompt as pieces: text, or an int n for n visual-token slots. `markers` and
    `counts`: the views in order (tiles row-major, then the global view) and the visual tokens each keeps.
    Pass only the views to show (a tile selector's chosen tiles and the global view; the views keeping a token);
    the global view alone is laid out as an unsplit image, tiles without the global view end with
    <fake_token_around_image> where the global view would have closed the image."""
    rows, cols = grid
    has_global = markers[-1] == GLOBAL
    if not rows or (has_global and len(markers) == 1):  # one view, or the global view alone: the unsplit layout
        return [FAKE + GLOBAL, counts[-1], FAKE]
    pieces: list[str | int] = []
    per_row: dict[int, int] = {}
    tiles = list(zip(markers, counts))[:-1] if has_global else list(zip(markers, counts))
    for marker, n in tiles:
        row = int(marker.split("_")[1])
        if per_row and row not in per_row:
            pieces.append("\n")
        per_row[row] = per_row.get(row, 0) + 1
        pieces += [FAKE + marker, n]
    if per_row:
        pieces.append("\n")
    return pieces + (["\n" + FAKE + GLOBAL, counts[-1], FAKE] if has_global else [FAKE])


def tile_of_patches(views: Views, b: int, patch_size: int, device) -> torch.Tensor:
    """(N_v,) the tile (row-major index in sample b's rows x cols) whose area holds each patch centre of the
    global view (a g x g grid, g = S / patch size, covering the whole image)."""
    rows, cols = views.grids[b]
    g = views.size // patch_size
    centre = (torch.arange(g, device=device, dtype=torch.float32) + 0.5) / g  # (g,) in [0, 1]
    r = (centre * rows).floor().long().clamp(max=rows - 1)
    c = (centre * cols).floor().long().clamp(max=cols - 1)
    return (r[:, None] * cols + c[None, :]).reshape(-1)
