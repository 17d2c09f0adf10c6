"""SeSimFeatures and appearance_augment tests (Zheng et al., CVPR 2021; MoNCE Table 2 rows).

All offline: the backbone is the random VGG-19 (``source="random"``), whose warning is silenced.
Oracles: parameter counts from the layer widths, ``VGGFeatures`` run directly, and edge-energy
maps of synthetic scenes (structure) compared with those of a different scene.
"""

import pytest
import torch
import torch.nn.functional as F

from patchcontrast.losses import build_loss
from patchcontrast.losses.sesim import self_similarity, sesim_contrastive, spatial_correlative_loss
from patchcontrast.nets.sesim import SESIM_LAYERS, SeSimFeatures, appearance_augment
from patchcontrast.nets.vgg import VGGFeatures

pytestmark = pytest.mark.filterwarnings("ignore:VGG-19 features come from an UNTRAINED")

SMALL = ("relu1_1", "relu2_1")  # cheap layers for the tests (strides 1 and 2)


def random_net(kind="learned", **kwargs):
    options = {"layers": SMALL, "allow_random_vgg": True, "head_channels": 16, **kwargs}
    if kind != "random":
        options.setdefault("vgg_source", "random")
    return SeSimFeatures(kind, **options)


def images(b=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g) * 2 - 1


def trainable(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ------------------------------------------------------------------ SeSimFeatures


def test_default_learned_heads_parameter_count():
    net = SeSimFeatures("learned", vgg_source="random", allow_random_vgg=True)
    assert net.layers == SESIM_LAYERS == ("relu3_1", "relu4_1")
    # per layer: Conv1x1(C, 256) + Conv1x1(256, 256), with biases; C = 256 and 512
    want = (256 * 256 + 256 + 256 * 256 + 256) + (512 * 256 + 256 + 256 * 256 + 256)
    assert trainable(net) == trainable(net.heads) == want == 328_704
    assert all(not p.requires_grad for p in net.backbone.parameters())
    assert net.channels == (256, 256)


@pytest.mark.parametrize("kind", ["fixed", "random"])
def test_fixed_and_random_have_no_trainable_parameters(kind):
    net = random_net(kind)
    assert trainable(net) == 0 and len(net.heads) == 0
    assert net.channels == (64, 128) and net.head_channels is None


def test_random_kind_needs_the_flag_and_its_own_backbone():
    with pytest.raises(ValueError, match="allow_random_vgg=True"):
        SeSimFeatures("random", layers=SMALL)
    with pytest.raises(ValueError, match="kind='random' builds its own random backbone"):
        SeSimFeatures("random", layers=SMALL, allow_random_vgg=True, vgg_source="torchvision")
    assert random_net("random").backbone.source == "random"


def test_rejects_bad_options():
    with pytest.raises(ValueError, match="kind must be one of 'fixed', 'learned', 'random'"):
        SeSimFeatures("lsesim")
    with pytest.raises(ValueError, match="head_channels must be a positive integer"):
        random_net(head_channels=0)
    with pytest.raises(ValueError, match="vgg_source must be one of"):
        SeSimFeatures("fixed", vgg_source="imagenet")
    with pytest.raises(ValueError, match="allow_random=True"):  # VGGFeatures' own guard
        SeSimFeatures("fixed", layers=SMALL, vgg_source="random")


def test_forward_shapes_and_fixed_equals_the_backbone():
    x = images(size=16)
    torch.manual_seed(0)
    fixed = random_net("fixed")
    out = fixed(x)
    assert [tuple(f.shape) for f in out] == [(2, 64, 16, 16), (2, 128, 8, 8)]
    direct = VGGFeatures(SMALL, source="random", allow_random=True, preprocess="native")
    direct.load_state_dict(fixed.backbone.state_dict())
    for a, b in zip(out, direct(x)):
        torch.testing.assert_close(a, b)
    learned = random_net("learned")
    assert [tuple(f.shape) for f in learned(x)] == [(2, 16, 16, 16), (2, 16, 8, 8)]


def test_train_mode_reaches_heads_only():
    net = random_net("learned").train()
    assert net.heads.training and not net.backbone.training


def test_generator_side_gradient_reaches_the_image_not_the_backbone():
    # G's step: the loss on the translation flows through the (frozen) net into the image
    net = random_net("learned")
    src, fake = images(seed=1), images(seed=2).requires_grad_(True)
    ids = torch.randperm(64, generator=torch.Generator().manual_seed(0))[:16]
    loss = sum(
        spatial_correlative_loss(self_similarity(a, ids), self_similarity(b, ids))
        for a, b in zip(net(src), net(fake))
    )
    loss.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.backbone.parameters())


def test_lsesim_heads_learn_the_contrastive_task():
    # a few Adam steps on the heads lower the contrastive loss between an image and its
    # augmented view (what the L-SeSim head phase does every iteration)
    torch.manual_seed(0)
    net = random_net("learned")
    optimiser = torch.optim.Adam(net.heads.parameters(), lr=1e-3)
    loss_fn = build_loss("patchnce", detach_keys=False)
    x = images(b=2, size=16, seed=3)
    view = appearance_augment(x, torch.Generator().manual_seed(4))
    ids = torch.randperm(64, generator=torch.Generator().manual_seed(5))[:32]

    def contrastive():
        q, k = net(x), net(view)
        return sum(
            sesim_contrastive(
                self_similarity(a, ids, patch_size=5),
                self_similarity(b, ids, patch_size=5),
                loss_fn,
            )
            for a, b in zip(q[1:], k[1:])
        )  # relu2_1: the 8x8 map

    before = contrastive().item()
    for _ in range(10):
        optimiser.zero_grad()
        contrastive().backward()
        optimiser.step()
    assert contrastive().item() < before - 0.1


# ------------------------------------------------------------------ appearance_augment


def scenes(b, seed, size=32):
    """Background, disc and rectangle with well separated brightness and random hues."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    out = []
    for _ in range(b):
        levels = torch.tensor([-0.6, 0.0, 0.6])[torch.randperm(3, generator=g)]
        colours = levels.view(3, 1) + 0.3 * (torch.rand(3, 3, generator=g) * 2 - 1)
        cy, cx = (torch.rand(2, generator=g) * size * 0.6 + size * 0.2).tolist()
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < (0.2 * size) ** 2
        x0, y0 = torch.randint(0, size // 2, (2,), generator=g).tolist()
        rect = (yy >= y0) & (yy < y0 + size // 3) & (xx >= x0) & (xx < x0 + size // 4)
        img = colours[0].view(3, 1, 1).expand(3, size, size).clone()
        img[:, disc] = colours[1].view(3, 1)
        img[:, rect] = colours[2].view(3, 1)
        out.append(img)
    return torch.stack(out)


def edge_energy(img):
    """Luma gradient magnitude averaged over 4x4 cells: (B, cells); pixel noise averages out."""
    luma = (img * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    gx = F.pad(luma[..., 1:] - luma[..., :-1], (0, 1))
    gy = F.pad(luma[..., 1:, :] - luma[..., :-1, :], (0, 0, 0, 1))
    return F.avg_pool2d((gx**2 + gy**2).sqrt(), 4).flatten(1)


def correlation(a, b):
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def test_augment_changes_colours_but_keeps_edges():
    x = scenes(8, seed=0)
    y = appearance_augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= -1 and y.max() <= 1
    assert ((y - x).abs().mean((1, 2, 3)) > 0.04).all()  # every image's colours change
    kept = correlation(edge_energy(x), edge_energy(y))
    other = correlation(edge_energy(x), edge_energy(scenes(8, seed=1)))
    assert kept.min() > 0.75  # same edges, new colours
    assert other.mean() < 0.5  # a different scene's edges (the reference level)


def test_augment_is_reproducible_with_a_generator():
    x = images(b=3)
    a = appearance_augment(x, torch.Generator().manual_seed(7))
    torch.testing.assert_close(appearance_augment(x, torch.Generator().manual_seed(7)), a)
    assert (appearance_augment(x, torch.Generator().manual_seed(8)) - a).abs().max() > 0.05


def test_augment_rejects_non_images():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\) image tensor"):
        appearance_augment(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\) image tensor"):
        appearance_augment(torch.zeros(3, 8, 8))
