"""The CUT family of unpaired objectives (CUT, FastCUT, +WeightNCE / MoNCE / PUT, GAN-only, cycle).

docs/design.md §2.2, §3.1, §3.6: ``L_G = lambda_GAN GAN(D(G(A))) + lambda_NCE NCE``, where NCE
contrasts
patches of ``G(A)`` (queries, through G's encoder and the projection head F) with the same
locations of ``A`` (keys), averaged over the encoder taps; in CUT mode the identity term on
``B -> G(B)`` is averaged in. The contrastive loss is any entry of ``CONTRASTIVE_LOSSES``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..losses import build_loss, multilayer_loss
from ..losses.adversarial import gan_loss
from ..losses.sesim import self_similarity, sesim_contrastive, spatial_correlative_loss
from ..nets import PatchDiscriminator, PatchSampleMLP, ResnetGenerator
from ..nets.diffaugment import diff_augment
from ..nets.projected import ProjectedDiscriminator
from ..nets.sesim import SeSimFeatures, appearance_augment
from ..nets.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator, r1_penalty
from .base import Objective, Phase


class UnpairedObjective(Objective):
    """CUT-family objective built from a ``CUTConfig`` (see ``patchcontrast.config``).

    Sub-modules: ``G`` (A->B), ``D`` (on B), ``F`` (projection head) when a contrastive loss is
    used; ``G_BA`` and ``D_A`` for ``contrastive="cycle"``; ``G_ema``, an exponential moving
    average of ``G`` that translates and draws the samples, when ``cfg.ema > 0``.

    ``cfg.diffaugment`` augments every image a discriminator sees, real and generated, in the D
    and the G steps (DiffAugment); the NCE terms see the images unaugmented.

    The translation pass also yields the encoder features of the real images, which are reused
    as NCE keys instead of encoding the real images a second time (upstream recomputes them).
    With flip equivariance an iteration whose input was flipped re-encodes the unflipped real
    images for the keys, exactly as upstream, because the encoder is not flip-equivariant.
    """

    def __init__(self, cfg, crop_size: int = 64, *, inference: bool = False):
        super().__init__()
        self.cfg = cfg
        net = {
            "ngf": cfg.ngf,
            "n_blocks": cfg.n_blocks,
            "antialias": cfg.antialias,
            "antialias_up": cfg.antialias_up,
        }
        if cfg.netG == "stylegan2":  # SinCUT (docs/design.md §4.4); these nets keep their own init
            self.G = StyleGAN2Generator(
                cfg.input_nc, cfg.output_nc, ngf=cfg.ngf, n_downsampling=cfg.stylegan2_downsampling
            )
        else:
            self.G = ResnetGenerator(
                cfg.input_nc, cfg.output_nc, residual=cfg.residual, positional=cfg.positional, **net
            )
        if cfg.ema > 0:  # not in any phase: moved by after_step only
            self.G_ema = copy.deepcopy(self.G).requires_grad_(False)
        if cfg.netD == "stylegan2":
            self.D = StyleGAN2Discriminator(cfg.output_nc, ndf=cfg.ndf, size=crop_size)
        elif cfg.netD == "projected":
            # D on frozen VGG features: its VGG is rebuilt from the weight source, never saved;
            # translation needs no D, so an inference objective does not load VGG weights
            if not inference:
                self.D = ProjectedDiscriminator(
                    ndf=cfg.ndf,
                    source=cfg.vgg_source,
                    weights=cfg.vgg_weights,
                    allow_random=cfg.vgg_source == "random",
                )
            self.exclude_from_state("D.vgg.")
        else:
            self.D = PatchDiscriminator(
                cfg.output_nc, ndf=cfg.ndf, n_layers=cfg.n_layers_d, antialias=cfg.antialias
            )
        self.contrastive = (
            cfg.contrastive not in ("none", "cycle") and cfg.lambda_nce > 0 and cfg.sesim == "none"
        )
        g_modules, d_modules = ["G"], ["D"]
        if self.contrastive:
            # built eagerly from the generator's known tap channels (no first-batch init)
            self.F = PatchSampleMLP(self.G.tap_channels(cfg.nce_layers), cfg.netF_nc)
            self.nce = build_loss(cfg.contrastive, tau=cfg.tau, **cfg.loss_options)
            g_modules.append("F")
        if cfg.contrastive == "cycle":
            self.G_BA = ResnetGenerator(cfg.output_nc, cfg.input_nc, **net)
            self.D_A = PatchDiscriminator(
                cfg.input_nc, ndf=cfg.ndf, n_layers=cfg.n_layers_d, antialias=cfg.antialias
            )
            g_modules.append("G_BA")
            d_modules.append("D_A")
        # Upstream order (docs/design.md §3.6): D step on the detached fake, then G (+F) with D
        # frozen.
        phases = [
            Phase(
                "D",
                tuple(d_modules),
                lr=cfg.lr if cfg.lr_d is None else cfg.lr_d,
                betas=tuple(cfg.betas),
            )
        ]
        g_frozen = tuple(d_modules)
        if cfg.sesim != "none" and not inference:
            self._build_sesim(cfg)
            if cfg.sesim == "learned":  # LSeSim: heads trained contrastively, frozen for G
                phases.append(Phase("H", ("sesim",), lr=cfg.lr, betas=tuple(cfg.betas)))
                g_frozen += ("sesim",)
        phases.append(
            Phase("G", tuple(g_modules), frozen=g_frozen, lr=cfg.lr, betas=tuple(cfg.betas))
        )
        self.phases = tuple(phases)
        self._cache: dict = {}

    def _build_sesim(self, cfg) -> None:
        """F/LSeSim features. Their frozen VGG backbone is rebuilt from its weight source and
        left out of ``state_dict``; translation does not build them (``inference=True``)."""
        random = cfg.sesim == "random" or cfg.vgg_source == "random"
        self.sesim = SeSimFeatures(
            cfg.sesim,
            vgg_source=None if cfg.sesim == "random" else cfg.vgg_source,
            vgg_weights=cfg.vgg_weights,
            allow_random_vgg=random,
        )
        self.exclude_from_state("sesim.backbone.")
        if cfg.sesim == "learned":
            self.nce = build_loss(cfg.contrastive, tau=cfg.tau, **cfg.loss_options)

    # -- iteration --------------------------------------------------------------------------
    def prepare(self, batch: dict) -> None:
        cfg, c = self.cfg, {}
        real_a, real_b = batch["A"], batch["B"]
        b = real_a.shape[0]
        with_idt = self.contrastive and cfg.nce_idt
        x = torch.cat([real_a, real_b]) if with_idt else real_a
        flipped = cfg.flip_equivariance and self.training and self._coin()
        if flipped:
            x = x.flip(-1)
        if self.contrastive:
            out, feats = self.G.forward_with_features(x, cfg.nce_layers)
            if flipped:  # keys must come from the unflipped images
                feats = self.G.encode(
                    torch.cat([real_a, real_b]) if with_idt else real_a, cfg.nce_layers
                )
            c["keys_a"] = [f[:b].detach() for f in feats]
            if with_idt:
                c["keys_b"] = [f[b:].detach() for f in feats]
        else:
            out = self.G(x)
        c["fake_b"] = out[:b]
        c["idt_b"] = out[b:] if with_idt else None
        c["flipped"] = flipped
        c["real_a"], c["real_b"] = real_a, real_b
        if cfg.contrastive == "cycle":
            c["rec_a"] = self.G_BA(c["fake_b"])
            c["fake_a"] = self.G_BA(real_b)
            c["rec_b"] = self.G(c["fake_a"])
        self._cache = c

    def release(self) -> None:
        self._cache = {}

    @torch.no_grad()
    def after_step(self) -> None:
        """``G_ema <- ema G_ema + (1 - ema) G`` (buffers are copied: the blur filters are
        fixed and instance norm keeps no running statistics)."""
        if self.cfg.ema == 0:
            return
        for avg, new in zip(self.G_ema.parameters(), self.G.parameters()):
            avg.lerp_(new, 1 - self.cfg.ema)
        for avg, new in zip(self.G_ema.buffers(), self.G.buffers()):
            avg.copy_(new)

    @property
    def translator(self) -> nn.Module:
        """The generator that translates: ``G_ema`` when there is one, else ``G``."""
        return self.G_ema if self.cfg.ema > 0 else self.G

    def _d(self, images: Tensor, net: str = "D") -> Tensor:
        """A discriminator's logits on (DiffAugment-ed) images."""
        return getattr(self, net)(diff_augment(images, self.cfg.diffaugment))

    def _coin(self) -> bool:
        """FastCUT's per-iteration flip decision (probability 0.5, torch's global RNG)."""
        return bool(torch.rand(()) < 0.5)

    def loss(self, phase: str) -> tuple[Tensor, dict[str, float]]:
        if phase == "H":
            return self._head_loss()
        return self._d_loss() if phase == "D" else self._g_loss()

    def _d_loss(self) -> tuple[Tensor, dict[str, float]]:
        c, mode = self._cache, self.cfg.gan_mode
        fake = gan_loss(self._d(c["fake_b"].detach()), False, mode=mode)
        real_b = c["real_b"].detach().requires_grad_(self.cfg.lambda_r1 > 0)
        pred_real = self._d(real_b)
        real = gan_loss(pred_real, True, mode=mode)
        loss = 0.5 * (fake + real)
        stats = {"D_fake": fake.item(), "D_real": real.item()}
        if self.cfg.lambda_r1 > 0:  # SinCUT: R1 on real images, in float32
            with torch.autocast(real_b.device.type, enabled=False):
                r1 = self.cfg.lambda_r1 * r1_penalty(pred_real.float(), real_b)
            loss = loss + r1
            stats["D_R1"] = r1.item()
        if self.cfg.contrastive == "cycle":
            fake_a = gan_loss(self._d(c["fake_a"].detach(), "D_A"), False, mode=mode)
            real_a = gan_loss(self._d(c["real_a"], "D_A"), True, mode=mode)
            loss = loss + 0.5 * (fake_a + real_a)
            stats.update(D_A_fake=fake_a.item(), D_A_real=real_a.item())
        return loss, stats

    def _g_loss(self) -> tuple[Tensor, dict[str, float]]:
        cfg, c = self.cfg, self._cache
        gan = cfg.lambda_gan * gan_loss(
            self._d(c["fake_b"]), True, mode=cfg.gan_mode, for_discriminator=False
        )
        loss, stats = gan, {"G_GAN": gan.item()}
        if self.contrastive:
            nce = self.nce_loss(c["fake_b"], c["keys_a"], flip_back=c["flipped"])
            stats["NCE"] = nce.item()
            if c["idt_b"] is not None:
                nce_y = self.nce_loss(c["idt_b"], c["keys_b"], flip_back=c["flipped"])
                stats["NCE_Y"] = nce_y.item()
                nce = 0.5 * (nce + nce_y)
            loss = loss + cfg.lambda_nce * nce
        if cfg.sesim != "none":
            structure = cfg.lambda_sesim * self.sesim_loss(c["real_a"], c["fake_b"])
            loss = loss + structure
            stats["SeSim"] = structure.item()
        if cfg.lambda_identity > 0:  # SinCUT's L1 identity term on G(B)
            idt = c["idt_b"] if c["idt_b"] is not None else self.G(c["real_b"])
            identity = cfg.lambda_identity * F.l1_loss(idt, c["real_b"])
            loss = loss + identity
            stats["G_idt"] = identity.item()
        if cfg.contrastive == "cycle":
            gan_a = cfg.lambda_gan * gan_loss(
                self._d(c["fake_a"], "D_A"), True, mode=cfg.gan_mode, for_discriminator=False
            )
            cycle = F.l1_loss(c["rec_a"], c["real_a"]) + F.l1_loss(c["rec_b"], c["real_b"])
            loss = loss + gan_a + cfg.lambda_cycle * cycle
            stats.update(G_A_GAN=gan_a.item(), cycle=cycle.item())
        stats["G"] = loss.item()
        return loss, stats

    def nce_loss(self, generated: Tensor, keys: list[Tensor], *, flip_back: bool = False) -> Tensor:
        """Contrastive loss between taps of ``generated`` (queries) and source taps ``keys``.

        ``keys``: encoder features ``(B, C_l, H_l, W_l)`` of the source images. Keys only need
        the projection head's forward (the loss detaches them), so that runs without autograd.
        """
        cfg = self.cfg
        queries = self.G.encode(generated, cfg.nce_layers)
        if flip_back:  # generated came from a flipped input: align it with the unflipped keys
            queries = [q.flip(-1) for q in queries]
        with torch.no_grad():
            k_samples, ids = self.F(keys, cfg.num_patches, per_image=cfg.per_image_patches)
        q_samples, _ = self.F(queries, patch_ids=ids)
        return multilayer_loss(self.nce, q_samples, k_samples)

    def _sesim_ids(self, feats: list[Tensor]) -> list[Tensor]:
        """Positions shared by the batch, drawn from torch's global RNG like the NCE patches."""
        return [
            torch.randperm(f.shape[-2] * f.shape[-1], device=f.device)[: self.cfg.num_patches]
            for f in feats
        ]

    def sesim_loss(self, source: Tensor, generated: Tensor) -> Tensor:
        """Spatially-correlative loss: self-similarity maps of the translation vs the source,
        averaged over the SeSim layers (source maps are the target: no gradient)."""
        cfg = self.cfg
        with torch.no_grad():
            fs = self.sesim(source)
        fg = self.sesim(generated)
        terms = [
            spatial_correlative_loss(
                self_similarity(s, ids, patch_size=cfg.sesim_patch_size),
                self_similarity(g, ids, patch_size=cfg.sesim_patch_size),
                mode=cfg.sesim_mode,
            )
            for s, g, ids in zip(fs, fg, self._sesim_ids(fs))
        ]
        return torch.stack(terms).mean()

    def _head_loss(self) -> tuple[Tensor, dict[str, float]]:
        """LSeSim: the heads learn, with the registry loss, to match the self-similarity of a
        source patch to that of the same patch in an appearance-augmented view."""
        x = self._cache["real_a"]
        with torch.no_grad():
            augmented = appearance_augment(x)
        fq, fk = self.sesim(x), self.sesim(augmented)
        size = self.cfg.sesim_patch_size
        terms = [
            sesim_contrastive(
                self_similarity(q, ids, patch_size=size),
                self_similarity(k, ids, patch_size=size),
                self.nce,
            )
            for q, k, ids in zip(fq, fk, self._sesim_ids(fq))
        ]
        loss = torch.stack(terms).mean()
        return loss, {"H_NCE": loss.item()}

    # -- outputs ----------------------------------------------------------------------------
    def samples(self, batch: dict) -> dict[str, Tensor]:
        real_a, real_b = batch["A"], batch["B"]
        columns = {"input": real_a, "translation": self.translator(real_a)}
        if self.cfg.contrastive == "cycle":
            columns["reconstruction"] = self.G_BA(columns["translation"])
        else:
            columns["identity"] = self.translator(real_b)
        return columns

    @torch.no_grad()
    def translate(self, images: Tensor) -> Tensor:
        """``G`` on ``(B, C, H, W)`` images in ``[-1, 1]`` of any size: reflect-padded to a
        multiple of the generator's down-sampling (4; SinCUT 2^n, at least 4), cropped back."""
        h, w = images.shape[-2:]
        multiple = max(4, 2**self.cfg.stylegan2_downsampling) if self.cfg.netG == "stylegan2" else 4
        pad_h, pad_w = -h % multiple, -w % multiple
        mode = "reflect" if min(h, w) > max(pad_h, pad_w) else "replicate"
        x = nn.functional.pad(images, (0, pad_w, 0, pad_h), mode=mode) if pad_h or pad_w else images
        return self.translator(x)[..., :h, :w]
