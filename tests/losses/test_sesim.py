"""Spatially-correlative loss tests (Zheng et al., CVPR 2021): self-similarity maps, the F/L-SeSim
loss and L-SeSim's contrastive objective.

Oracles: a per-position, per-window-entry Python loop of the cosine similarity (zero outside the
map), the paper's two distances written out per anchor, and ``patch_nce`` on normalised maps.
"""

import pytest
import torch
import torch.nn.functional as F

from patchcontrast.losses import CONTRASTIVE_LOSSES, build_loss, patch_nce
from patchcontrast.losses.sesim import (
    self_similarity,
    sesim_contrastive,
    spatial_correlative_loss,
)

ATOL = 1e-12


def features(b=2, c=5, h=6, w=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=g, dtype=torch.float64)


def naive_self_similarity(f, ids, patch_size, stride):
    """ids (B, N); entry (dy, dx) row-major; 0 outside the map or for a zero feature."""
    b, _, h, w = f.shape
    r = patch_size // 2
    out = torch.zeros(b, ids.shape[1], patch_size**2, dtype=f.dtype)
    for i in range(b):
        for n, p in enumerate(ids[i].tolist()):
            y, x = divmod(p, w)
            for k in range(patch_size**2):
                dy, dx = k // patch_size - r, k % patch_size - r
                yy, xx = y + dy * stride, x + dx * stride
                if 0 <= yy < h and 0 <= xx < w:
                    a, v = f[i, :, y, x], f[i, :, yy, xx]
                    if a.norm() > 0 and v.norm() > 0:
                        out[i, n, k] = a @ v / (a.norm() * v.norm())
    return out


# ------------------------------------------------------------------ self_similarity


@pytest.mark.parametrize("patch_size,stride", [(1, 1), (3, 1), (5, 2), (7, 1)])
def test_self_similarity_matches_naive_everywhere(patch_size, stride):
    f = features()
    ids = torch.arange(6 * 7)  # every position, so every border and corner is covered
    got = self_similarity(f, ids, patch_size=patch_size, stride=stride)
    assert got.shape == (2, 42, patch_size**2) and got.dtype == torch.float64
    want = naive_self_similarity(f, ids.expand(2, -1), patch_size, stride)
    torch.testing.assert_close(got, want, rtol=0, atol=ATOL)
    # the corner (0, 0) sees only the lower-right part of its window: the top row is padding
    top_row = got[:, 0, :patch_size]
    assert (top_row == 0).all() == (patch_size > 1)


def test_per_image_ids_match_naive_and_shared_ids():
    f = features(b=3, seed=1)
    g = torch.Generator().manual_seed(2)
    ids = torch.stack([torch.randperm(42, generator=g)[:9] for _ in range(3)])  # (B, N)
    got = self_similarity(f, ids, patch_size=3)
    torch.testing.assert_close(got, naive_self_similarity(f, ids, 3, 1), rtol=0, atol=ATOL)
    shared = self_similarity(f, ids[0], patch_size=3)
    torch.testing.assert_close(self_similarity(f, ids[0].expand(3, -1), patch_size=3), shared)


def test_centre_entry_is_one_and_values_are_cosines():
    f = features(seed=3)
    s = self_similarity(f, torch.arange(42), patch_size=5)
    torch.testing.assert_close(s[..., 12], torch.ones(2, 42, dtype=torch.float64))
    assert s.abs().max() <= 1 + 1e-12


def test_zero_feature_gives_zero_similarity_and_finite_gradient():
    f = features(seed=4)
    f[:, :, 2, 3] = 0  # e.g. a dead ReLU position
    f.requires_grad_(True)
    s = self_similarity(f, torch.tensor([2 * 7 + 3, 2 * 7 + 2]), patch_size=3)
    assert (s[:, 0] == 0).all()  # the zero feature's own map, centre included
    assert (s[:, 1, 5] == 0).all()  # its right neighbour sees it as 0
    s.sum().backward()
    assert torch.isfinite(f.grad).all()


def test_scaling_each_position_keeps_the_maps():
    f = features(seed=5)
    scale = torch.rand(2, 1, 6, 7, dtype=torch.float64) * 5 + 0.1
    ids = torch.arange(42)
    torch.testing.assert_close(self_similarity(f * scale, ids), self_similarity(f, ids))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"patch_size": 4}, "patch_size must be odd"),
        ({"patch_size": 0}, "patch_size must be >= 1"),
        ({"stride": 0}, "stride must be >= 1"),
    ],
)
def test_self_similarity_rejects_bad_window(kwargs, match):
    with pytest.raises(ValueError, match=match):
        self_similarity(features(), torch.arange(4), **kwargs)


def test_self_similarity_rejects_bad_inputs():
    f = features()
    with pytest.raises(ValueError, match=r"ids must lie in \[0, H \* W\) = \[0, 42\)"):
        self_similarity(f, torch.tensor([0, 42]))
    with pytest.raises(ValueError, match="integer tensor"):
        self_similarity(f, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\(N,\) or \(2, N\)"):
        self_similarity(f, torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        self_similarity(f[0], torch.arange(4))


# ------------------------------------------------------------------ spatial_correlative_loss


def maps(seed, b=2, n=10, k=9):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, k, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("mode", ["l1", "cos"])
def test_loss_is_zero_for_identical_maps(mode):
    s = self_similarity(features(seed=6), torch.arange(42), patch_size=3)
    loss = spatial_correlative_loss(s, s.clone(), mode=mode, reduction="none")
    assert loss.shape == (2, 42)
    torch.testing.assert_close(loss, torch.zeros_like(loss), rtol=0, atol=1e-12)


def test_loss_formulas_match_naive():
    sx, sy = maps(7), maps(8)
    l1 = spatial_correlative_loss(sx, sy, mode="l1", reduction="none")
    cos = spatial_correlative_loss(sx, sy, mode="cos", reduction="none")
    for b in range(2):
        for i in range(10):
            a, v = sx[b, i], sy[b, i]
            torch.testing.assert_close(l1[b, i], (a - v).abs().sum() / 9)
            torch.testing.assert_close(cos[b, i], 1 - a @ v / (a.norm() * v.norm()))
    assert spatial_correlative_loss(sx, sy).item() == pytest.approx(cos.mean().item())
    assert spatial_correlative_loss(sx, sy, mode="l1", reduction="sum").item() == (
        pytest.approx(l1.sum().item())
    )


@pytest.mark.parametrize("mode", ["l1", "cos"])
def test_loss_ignores_feature_scale_of_the_translation(mode):
    # self-similarity is cosine: a positive scale per position (or a global one) of the
    # generated features leaves the loss unchanged ...
    ids = torch.arange(42)
    src, gen = features(seed=9), features(seed=10)
    sx = self_similarity(src, ids, patch_size=3)
    base = spatial_correlative_loss(sx, self_similarity(gen, ids, patch_size=3), mode=mode)
    per_position = torch.rand(2, 1, 6, 7, dtype=torch.float64) * 3 + 0.2
    for scaled in (gen * per_position, gen * 7.5):
        got = spatial_correlative_loss(sx, self_similarity(scaled, ids, patch_size=3), mode=mode)
        torch.testing.assert_close(got, base)
    # ... while a different scale per channel changes angles, hence the loss
    per_channel = torch.tensor([0.1, 1.0, 5.0, 0.5, 2.0], dtype=torch.float64).view(1, 5, 1, 1)
    changed = spatial_correlative_loss(
        sx, self_similarity(gen * per_channel, ids, patch_size=3), mode=mode
    )
    assert abs(changed.item() - base.item()) > 1e-3


def test_source_maps_are_detached():
    sx, sy = maps(11).requires_grad_(True), maps(12).requires_grad_(True)
    for mode in ("l1", "cos"):
        spatial_correlative_loss(sx, sy, mode=mode).backward()
    assert sx.grad is None
    assert sy.grad is not None and sy.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["l1", "cos"])
def test_gradcheck_wrt_generated_features(mode):
    ids = torch.tensor([0, 5, 13, 19])  # corners/borders and the inside of a 4x5 map
    sx = self_similarity(features(1, 3, 4, 5, seed=13), ids, patch_size=3)
    gen = features(1, 3, 4, 5, seed=14).requires_grad_(True)

    def fn(g):
        return spatial_correlative_loss(sx, self_similarity(g, ids, patch_size=3), mode=mode)

    assert torch.autograd.gradcheck(fn, (gen,))


def test_loss_rejects_bad_arguments():
    sx = maps(15)
    with pytest.raises(ValueError, match="mode must be one of 'l1', 'cos'; got 'l2'"):
        spatial_correlative_loss(sx, sx, mode="l2")
    with pytest.raises(ValueError, match="reduction must be one of"):
        spatial_correlative_loss(sx, sx, reduction="avg")
    with pytest.raises(ValueError, match="source and generated must have the same shape"):
        spatial_correlative_loss(sx, sx[:, :5])
    with pytest.raises(ValueError, match=r"generated must be a floating-point \(B, N, K\)"):
        spatial_correlative_loss(sx, sx[0])


# ------------------------------------------------------------------ sesim_contrastive


def test_contrastive_with_patchnce_is_patch_nce_on_normalised_maps():
    q, k = maps(16, n=12), maps(17, n=12)
    got = sesim_contrastive(q, k, build_loss("patchnce"))
    want = patch_nce(F.normalize(q, dim=-1), F.normalize(k, dim=-1))
    torch.testing.assert_close(got, want)
    # maps that differ only in scale per anchor give the same loss (they are normalised)
    scale = torch.rand(2, 12, 1, dtype=torch.float64) + 0.5
    torch.testing.assert_close(sesim_contrastive(q * scale, k, build_loss("patchnce")), want)


def test_contrastive_positive_is_the_same_position():
    # keys equal to the queries (a perfect augmentation) score lower than keys rolled by one
    q = maps(18, n=16)
    loss = build_loss("patchnce")
    assert sesim_contrastive(q, q.clone(), loss) < sesim_contrastive(q, q.roll(1, dims=1), loss)


@pytest.mark.parametrize("name", sorted(CONTRASTIVE_LOSSES))
def test_contrastive_runs_every_registry_loss(name):
    q, k = maps(19, n=12).requires_grad_(True), maps(20, n=12)
    out = sesim_contrastive(q, k, build_loss(name))
    assert out.dim() == 0 and torch.isfinite(out)
    out.backward()
    assert torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0


def test_contrastive_rejects_mismatched_maps():
    with pytest.raises(ValueError, match="q_maps and k_maps must have the same shape"):
        sesim_contrastive(maps(21), maps(22, k=4), build_loss("patchnce"))
