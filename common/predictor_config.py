"""The attribute predictor's typed configuration: common.config's data/train/log sections plus ``model``,
``loss``, ``optim`` and ``eval``.

Loaded strictly from YAML by ``common.config.load_config(PredictorConfig, path, overrides)``; every field is
explained here because the YAML files (configs/predictor/*.yaml) only set values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.config import DataConfig, LogConfig, TrainConfig

# The attributes the synthetic generator actually draws (common.synthetic.MODELLED; the other CelebA columns are
# independent draws with no visual cue there, so their accuracy can only reach the majority baseline). Each
# modelled label carries ~3% label noise, so ~97% is the ceiling.
SYNTHETIC_MODELLED_ATTRIBUTES = [
    "Smiling", "Mouth_Slightly_Open", "High_Cheekbones", "Narrow_Eyes", "Eyeglasses", "Male", "Bangs",
    "Black_Hair", "Brown_Hair", "Blond_Hair", "Gray_Hair", "Bald", "Pale_Skin", "Young", "No_Beard",
    "5_o_Clock_Shadow", "Goatee", "Mustache", "Wearing_Lipstick", "Heavy_Makeup", "Rosy_Cheeks", "Bushy_Eyebrows",
]


@dataclass
class PredictorModelConfig:
    """Architecture (the input resolution is ``data.resolution``)."""

    # Only "resnet18": torchvision's BasicBlock in four stages with a 3x3 stride-1 stem and no max-pool.
    arch: str = field(default="resnet18", metadata={"choices": ("resnet18",)})
    # Channels of the first stage; stages use width, 2w, 4w, 8w (features Df = 8w). 64 is torchvision's ResNet-18.
    width: int = field(default=64, metadata={"min": 1})
    # BasicBlocks per stage; [2, 2, 2, 2] is ResNet-18, [1, 1, 1, 1] a ResNet-10 for quick CPU runs.
    blocks: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    # Dropout on the pooled features before the heads (0 = off).
    dropout: float = field(default=0.0, metadata={"min": 0.0})


@dataclass
class PredictorLossConfig:
    """total = attributes * BCE(mean over 40) + yaw * MSE(standardised yaw) + factors * MSE(standardised)."""

    attributes: float = field(default=1.0, metadata={"min": 0.0})
    yaw: float = field(default=1.0, metadata={"min": 0.0})
    # Only used when the cache has synthetic factors (F > 0).
    factors: float = field(default=1.0, metadata={"min": 0.0})


@dataclass
class PredictorOptimConfig:
    """AdamW with linear warm-up then cosine decay to ``min_lr_ratio * train.lr`` at ``train.total_images``."""

    weight_decay: float = field(default=5e-4, metadata={"min": 0.0})
    warmup_images: int = field(default=2000, metadata={"min": 0})
    # cosine | constant
    schedule: str = field(default="cosine", metadata={"choices": ("cosine", "constant")})
    min_lr_ratio: float = field(default=0.01, metadata={"min": 0.0})


@dataclass
class PredictorEvalConfig:
    """Validation during training and at the end (metrics.json)."""

    # Validate every this many images (0 = only at the end).
    val_every_images: int = field(default=20000, metadata={"min": 0})
    # Validation images per periodic pass (0 = the whole valid split); the final pass always uses all of it.
    val_images: int = field(default=2000, metadata={"min": 0})
    batch_size: int = field(default=256, metadata={"min": 1})
    # Attributes averaged separately as "mean_accuracy_modelled" (empty = all 40).
    modelled_attributes: list[str] = field(default_factory=lambda: list(SYNTHETIC_MODELLED_ATTRIBUTES))

    def __post_init__(self):
        from common.attributes import CELEBA_ATTRIBUTES, suggest  # names must be CelebA's exactly

        bad = [a for a in self.modelled_attributes if a not in CELEBA_ATTRIBUTES]
        if bad:
            close = suggest(bad[0], CELEBA_ATTRIBUTES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else " (expected CelebA's attribute names)"
            raise ValueError(f"unknown attribute {bad[0]!r} in modelled_attributes{hint}")


@dataclass
class PredictorConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: PredictorModelConfig = field(default_factory=PredictorModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    loss: PredictorLossConfig = field(default_factory=PredictorLossConfig)
    optim: PredictorOptimConfig = field(default_factory=PredictorOptimConfig)
    eval: PredictorEvalConfig = field(default_factory=PredictorEvalConfig)
