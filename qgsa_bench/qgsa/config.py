"""The QGSA module's hyperparameters with the seed paper's defaults (section 3.2, 3.5).

Here, beside the method, so that the method depends on nothing above it (command configs live in
`qgsa_bench.config`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

SOFT_MASK_SPACES = ("softmax", "logits")
PROJECTIONS = ("w_vis", "connector")
FILLS = ("zero", "learned")


@dataclass
class QGSAConfig:
    """Hyperparameters of the QGSA module. Dimensions d_v, d_q come from the base model's config."""

    k_min: int = 4  # Eq. 2
    k_max: int = 32  # Eq. 2
    d_h_max: int = 256  # d_h = min(d_q, d_v, 256) (Eq. 1)
    fcomp_hidden: int = 256  # f_comp: two-layer MLP, 256 hidden units
    align_dim: int = 512  # W_p: d_v -> 512 (CLIP ViT-B/32 text embedding size)
    tau: float = 1.0  # Gumbel temperature at the start of training (annealed by the trainer)
    tau_sig_min: float = 0.05  # tau_sig = max(tau, 0.05) (Eq. 4)
    # Eq. 4 thresholds the Gumbel-softmax probabilities ("softmax", the paper's text). Those are
    # ~1/N each, so sigma((s~ - t)/tau_sig) is ~0.5 everywhere and gives weak gradients; "logits"
    # applies the same threshold to the perturbed logits (s + g)/tau instead. See README.
    soft_mask_space: str = "softmax"
    # How selected patches reach the LM. "w_vis" (the paper): W_vis projects each selected patch to one
    # LM token, a path the frozen LM never saw in training. "connector": the base model's own connector
    # (pixel shuffle + projection) runs on the patch grid with unselected patches zeroed, and the LM gets
    # the connector tokens that hold at least one selected patch, in raster order. See README.
    projection: str = "w_vis"
    # With projection "connector": what stands in for an unselected patch before the connector. "zero"
    # (default); "learned": one trainable vector of the vision width (initialised to zero, so training
    # starts from "zero"), the same for every image and position, so it carries nothing from the image.
    # A zeroed patch is something the base never saw; a fill can learn to look like empty canvas. README.
    fill: str = "zero"

    def __post_init__(self):
        if not 1 <= self.k_min <= self.k_max:
            raise ValueError(f"need 1 <= k_min <= k_max, got k_min={self.k_min}, k_max={self.k_max}")
        if self.soft_mask_space not in SOFT_MASK_SPACES:
            raise ValueError(f"soft_mask_space must be one of {SOFT_MASK_SPACES}")
        if self.projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}")
        if self.fill not in FILLS:
            raise ValueError(f"fill must be one of {FILLS}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "QGSAConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
