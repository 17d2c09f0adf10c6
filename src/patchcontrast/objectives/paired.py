"""The SPADE family of paired objectives: label map -> photo with a VGG-19 metric loss.

docs/design.md §3.4, §4.5, §5.4 and MoNCE Table 3/4:
``L_G = GAN + lambda_feat FM + lambda_metric M``
with a multi-scale hinge PatchGAN, discriminator feature matching (FM) and a metric M between
the generated image and the ground truth on frozen VGG-19 features:

* ``perceptual``: SPADE's weighted L1 between VGG activations;
* ``patchnce`` / ``weightnce`` / ``monce`` (or any registry loss): patch contrast per VGG layer
  (the generated image's patches are queries, the real image's patches at the same positions the
  positives, its other patches the negatives; no projection head, only L2 normalisation),
  weighted per layer like the perceptual loss;
* ``monce-official``: the released MoNCE-SPADE code (PatchNCE on the first layers, its own OT
  variant on the last one, see :func:`~patchcontrast.losses.monce.monce_spade_official`).

``bidirectional`` adds the reverse direction (real patches as anchors, generated ones as keys,
with gradient through the keys) and averages the two (MoNCE Table 4, "B").
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..losses import build_loss, multilayer_loss
from ..losses.adversarial import gan_loss
from ..losses.monce import MoNCESpadeOfficialLoss
from ..losses.nce import PatchNCELoss
from ..losses.perceptual import perceptual_loss
from ..nets import PatchSampleMLP
from ..nets.spade import (
    MultiscaleDiscriminator,
    SPADEGenerator,
    feature_matching_loss,
    one_hot_labels,
)
from ..nets.vgg import PAPER_LAYERS, UPSTREAM_LAYERS, VGGFeatures
from .base import Objective, Phase

VGG_LAYER_SETS = {"paper": PAPER_LAYERS, "upstream": UPSTREAM_LAYERS}


def label_colours(n: int) -> Tensor:
    """(n, 3) fixed colours in [-1, 1] for drawing label maps in sample grids."""
    g = torch.Generator().manual_seed(1234)
    return torch.rand(n, 3, generator=g) * 2 - 1


class PairedObjective(Objective):
    """SPADE-family objective built from a ``SPADEConfig`` (see ``patchcontrast.config``).

    Sub-modules: ``G`` (SPADE generator), ``D`` (multi-scale PatchGAN on label + image), ``vgg``
    (the metric's feature network, absent for ``metric="none"`` and in inference mode). A frozen
    VGG is rebuilt from its weight source and left out of ``state_dict`` (80 MB per checkpoint
    otherwise); an unfrozen one is trained with G and saved.

    Order per iteration as SPADE: the G step, then the D step on the same (detached) fake.
    SPADE regenerates the fake under ``no_grad`` for its D step after G's update; re-using the
    G step's fake saves a generator forward per iteration and follows CUT's order of data.

    ``inference=True`` builds only G (translation needs neither D nor VGG weights).
    """

    def __init__(self, cfg, *, inference: bool = False):
        super().__init__()
        self.cfg = cfg
        self.in_nc = cfg.label_nc + int(cfg.dont_care)
        self.G = SPADEGenerator(
            self.in_nc,
            ngf=cfg.ngf,
            num_upsampling_layers=cfg.num_upsampling_layers,
            norm=cfg.norm_g,
            spectral=cfg.spectral_g,
        )
        self.register_buffer("colours", label_colours(self.in_nc), persistent=False)
        if inference:
            return
        self.D = MultiscaleDiscriminator(
            self.in_nc + 3, ndf=cfg.ndf, n_layers=cfg.n_layers_d, num_d=cfg.num_d, norm=cfg.norm_d
        )
        self.uses_vgg = cfg.metric != "none" and cfg.lambda_metric > 0
        g_modules = ["G"]
        if self.uses_vgg:
            layers = VGG_LAYER_SETS[cfg.vgg_layers]
            self.vgg = VGGFeatures(
                layers,
                source=cfg.vgg_source,
                weights=cfg.vgg_weights,
                allow_random=cfg.allow_random_vgg,
                preprocess=cfg.vgg_preprocess,
                frozen=cfg.vgg_frozen,
            )
            if cfg.vgg_frozen:
                self.exclude_from_state("vgg.")
            else:
                g_modules.append("vgg")
            if cfg.metric != "perceptual":
                # sampling only (no projection head), shared positions across the batch
                self.sampler = PatchSampleMLP(self.vgg.channels, use_mlp=False)
                self.nce = self._contrastive_losses(len(layers))
        lr, betas = cfg.lr, tuple(cfg.betas)
        g_lr, d_lr = (lr / 2, lr * 2) if cfg.ttur else (lr, lr)
        self.phases = (
            Phase("G", tuple(g_modules), frozen=("D",), lr=g_lr, betas=betas),
            Phase("D", ("D",), lr=d_lr, betas=betas),
        )
        self._cache: dict = {}

    def _contrastive_losses(self, n_layers: int) -> nn.ModuleList:
        """One loss module per VGG layer (the same one, except for ``monce-official``)."""
        cfg = self.cfg
        detach = not cfg.bidirectional
        if cfg.metric == "monce-official":
            # docs/design.md §3.4: plain PatchNCE on the first layers, the OT variant on the last
            options = {"eps": 1.0, "ot_weight": 128.0, **cfg.loss_options}
            return nn.ModuleList(
                [PatchNCELoss(tau=cfg.tau, detach_keys=detach) for _ in range(n_layers - 1)]
                + [MoNCESpadeOfficialLoss(tau=cfg.tau, detach_keys=detach, **options)]
            )
        loss = build_loss(cfg.metric, tau=cfg.tau, detach_keys=detach, **cfg.loss_options)
        return nn.ModuleList([loss] * n_layers)

    # -- iteration --------------------------------------------------------------------------
    def segmentation(self, labels: Tensor) -> Tensor:
        """(B, 1, H, W) or (B, H, W) class ids -> (B, label_nc [+1], H, W) one-hot."""
        return one_hot_labels(labels, self.cfg.label_nc, dont_care=self.cfg.dont_care)

    def prepare(self, batch: dict) -> None:
        seg = self.segmentation(batch["label"])
        self._cache = {"seg": seg, "real": batch["image"], "fake": self.G(seg)}

    def release(self) -> None:
        self._cache = {}

    def loss(self, phase: str) -> tuple[Tensor, dict[str, float]]:
        return self._g_loss() if phase == "G" else self._d_loss()

    def _discriminate(
        self, seg: Tensor, fake: Tensor, real: Tensor
    ) -> tuple[list[list[Tensor]], list[list[Tensor]]]:
        """D on fake and real pairs in one batch; per scale, lists of activations of each."""
        b = fake.shape[0]
        both = self.D(torch.cat([torch.cat([seg, fake], 1), torch.cat([seg, real], 1)]))
        return (
            [[x[:b] for x in scale] for scale in both],
            [[x[b:] for x in scale] for scale in both],
        )

    def _g_loss(self) -> tuple[Tensor, dict[str, float]]:
        cfg, c = self.cfg, self._cache
        pred_fake, pred_real = self._discriminate(c["seg"], c["fake"], c["real"])
        gan = (
            cfg.lambda_gan
            * torch.stack(
                [
                    gan_loss(s[-1], True, mode=cfg.gan_mode, for_discriminator=False)
                    for s in pred_fake
                ]
            ).mean()
        )
        loss, stats = gan, {"G_GAN": gan.item()}
        if cfg.lambda_feat > 0:
            feat = cfg.lambda_feat * feature_matching_loss(pred_fake, pred_real)
            loss = loss + feat
            stats["G_feat"] = feat.item()
        if self.uses_vgg:
            metric = cfg.lambda_metric * self.metric_loss(c["fake"], c["real"])
            loss = loss + metric
            stats["G_metric"] = metric.item()
        stats["G"] = loss.item()
        return loss, stats

    def _d_loss(self) -> tuple[Tensor, dict[str, float]]:
        cfg, c = self.cfg, self._cache
        pred_fake, pred_real = self._discriminate(c["seg"], c["fake"].detach(), c["real"])
        fake = torch.stack([gan_loss(s[-1], False, mode=cfg.gan_mode) for s in pred_fake]).mean()
        real = torch.stack([gan_loss(s[-1], True, mode=cfg.gan_mode) for s in pred_real]).mean()
        return fake + real, {"D_fake": fake.item(), "D_real": real.item()}

    def metric_loss(self, fake: Tensor, real: Tensor) -> Tensor:
        """The metric between generated and real images (both ``(B, 3, H, W)`` in [-1, 1])."""
        cfg = self.cfg
        weights = tuple(cfg.layer_weights)
        fake_feats = self.vgg(fake)
        if cfg.vgg_frozen:
            with torch.no_grad():  # the target: no graph through a fixed network
                real_feats = self.vgg(real)
        else:
            real_feats = self.vgg(real)
        if cfg.metric == "perceptual":
            return perceptual_loss(fake_feats, real_feats, weights)
        # positions drawn on the real features, reused for the generated ones (as upstream)
        keys, ids = self.sampler(real_feats, cfg.num_patches)
        queries, _ = self.sampler(fake_feats, patch_ids=ids)
        forward = self._layers(queries, keys, weights)
        if not cfg.bidirectional:
            return forward
        return 0.5 * (forward + self._layers(keys, queries, weights))

    def _layers(self, qs: list[Tensor], ks: list[Tensor], weights: tuple[float, ...]) -> Tensor:
        losses = list(self.nce)
        if all(x is losses[0] for x in losses):
            return multilayer_loss(losses[0], qs, ks, weights)
        return torch.stack([w * loss(q, k) for w, loss, q, k in zip(weights, losses, qs, ks)]).sum()

    # -- outputs ----------------------------------------------------------------------------
    def label_image(self, labels: Tensor) -> Tensor:
        """(B, 1, H, W) class ids -> (B, 3, H, W) colour-coded picture in [-1, 1]."""
        ids = labels.long().squeeze(1).clamp(0, self.in_nc - 1)
        return self.colours[ids].permute(0, 3, 1, 2)

    def samples(self, batch: dict) -> dict[str, Tensor]:
        seg = self.segmentation(batch["label"])
        return {
            "label": self.label_image(batch["label"]),
            "synthesized": self.G(seg),
            "real": batch["image"],
        }

    @torch.no_grad()
    def translate(self, labels: Tensor) -> Tensor:
        """Images for ``(B, 1, H, W)`` label maps of any size: edge-padded to the generator's
        multiple (2^5 for ``normal``) and cropped back."""
        multiple = self.G.size_multiple
        h, w = labels.shape[-2:]
        pad_h, pad_w = -h % multiple, -w % multiple
        seg = self.segmentation(labels)
        if pad_h or pad_w:
            seg = nn.functional.pad(seg, (0, pad_w, 0, pad_h), mode="replicate")
        return self.G(seg)[..., :h, :w]
