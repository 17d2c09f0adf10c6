"""PatchSampleMLP tests (docs/design.md §2.2, §4.3): eager head, sampling ids, normalisation.

Oracle: the sample for image b and id i is the (normalised) projection of ``feat[b, :, i // W,
i % W]``, computed directly.
"""

import pytest
import torch
from torch import nn

from patchcontrast.nets import PatchSampleMLP, ResnetGenerator

CUT_CHANNELS = (3, 128, 256, 256, 256)


def feats_for(channels, sizes, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, c, h, w, generator=g) for c, (h, w) in zip(channels, sizes)]


def oracle(head, l, feat, ids):
    # per image b and patch p: pick the feature vector at flat position ids[b, p]
    b, c, h, w = feat.shape
    ids = ids.expand(b, -1) if ids.dim() == 1 else ids
    rows = torch.stack(
        [torch.stack([feat[i, :, j // w, j % w] for j in ids[i].tolist()]) for i in range(b)]
    )  # (B, P, C)
    x = head.mlps[l](rows)
    return x / (x.norm(dim=-1, keepdim=True) + 1e-7)


def test_parameter_count_and_eager_build():
    head = PatchSampleMLP(CUT_CHANNELS)  # parameters exist before any forward
    n = sum(p.numel() for p in head.parameters())
    assert n == 560_384
    assert round(n / 1e6, 3) == 0.560
    assert head.in_channels == CUT_CHANNELS


def test_built_from_generator_taps():
    head = PatchSampleMLP(ResnetGenerator().tap_channels())
    assert [m[0].in_features for m in head.mlps] == list(CUT_CHANNELS)
    assert all(isinstance(m[1], nn.ReLU) and m[2].out_features == 256 for m in head.mlps)


def test_shapes_norms_and_values():
    torch.manual_seed(0)
    head = PatchSampleMLP((3, 8), out_channels=16)
    feats = feats_for((3, 8), [(10, 12), (4, 4)])
    samples, ids = head(feats, num_patches=32)
    assert [tuple(s.shape) for s in samples] == [(2, 32, 16), (2, 16, 16)]  # P = min(32, 16)
    assert [tuple(i.shape) for i in ids] == [(32,), (16,)]
    for s in samples:
        # at init (xavier gain 0.02) ||x|| ~ 1e-3, so the +1e-7 shows: norms are ~0.9999, not 1
        torch.testing.assert_close(s.norm(dim=-1), torch.ones(s.shape[:2]), atol=1e-3, rtol=0)
        assert (s.norm(dim=-1) <= 1).all()
    for l in range(2):
        torch.testing.assert_close(samples[l], oracle(head, l, feats[l], ids[l]))


def test_ids_are_distinct_positions_and_all_when_p_exceeds_hw():
    head = PatchSampleMLP((4,), use_mlp=False)
    _, (ids,) = head(feats_for((4,), [(3, 5)]), num_patches=256)
    assert sorted(ids.tolist()) == list(range(15))
    _, (ids,) = head(feats_for((4,), [(8, 8)]), num_patches=20)
    assert len(set(ids.tolist())) == 20 and ids.max() < 64


def test_shared_ids_across_batch():
    head = PatchSampleMLP((4,), out_channels=8)
    one = torch.randn(1, 4, 6, 6)
    samples, (ids,) = head([one.expand(3, -1, -1, -1)], num_patches=10)
    assert ids.shape == (10,)
    assert torch.equal(samples[0][0], samples[0][1]) and torch.equal(samples[0][0], samples[0][2])


def test_given_ids_are_reused_exactly():
    head = PatchSampleMLP((3, 8), out_channels=16)
    keys = feats_for((3, 8), [(8, 8), (4, 6)], seed=1)
    queries = feats_for((3, 8), [(8, 8), (4, 6)], seed=2)
    _, key_ids = head(keys, num_patches=12)
    q_samples, q_ids = head(queries, patch_ids=key_ids)
    assert all(a is b for a, b in zip(q_ids, key_ids))
    for l in range(2):
        torch.testing.assert_close(q_samples[l], oracle(head, l, queries[l], key_ids[l]))


def test_per_image_ids_differ_and_are_reused():
    head = PatchSampleMLP((4,), out_channels=8)
    feats = [torch.randn(1, 4, 8, 8).expand(3, -1, -1, -1)]  # identical images
    samples, (ids,) = head(
        feats, num_patches=16, per_image=True, generator=torch.Generator().manual_seed(0)
    )
    assert ids.shape == (3, 16)
    assert not torch.equal(ids[0], ids[1]) and not torch.equal(ids[1], ids[2])
    assert not torch.equal(samples[0][0], samples[0][1])
    assert all(len(set(row.tolist())) == 16 for row in ids)
    torch.testing.assert_close(samples[0], oracle(head, 0, feats[0], ids))
    again, _ = head(feats, patch_ids=[ids])
    assert torch.equal(again[0], samples[0])


def test_generator_makes_ids_reproducible():
    head = PatchSampleMLP((4,), use_mlp=False)
    feats = feats_for((4,), [(8, 8)])
    _, a = head(feats, num_patches=8, generator=torch.Generator().manual_seed(7))
    _, b = head(feats, num_patches=8, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(7)
    _, c = head(feats, num_patches=8)
    torch.manual_seed(7)
    _, d = head(feats, num_patches=8)
    assert torch.equal(a[0], b[0]) and torch.equal(c[0], d[0])


def test_without_mlp_only_normalises():
    head = PatchSampleMLP((5,), use_mlp=False)
    assert not list(head.parameters())
    feat = torch.randn(2, 5, 4, 4)
    (s,), (ids,) = head([feat], num_patches=6)
    rows = feat.flatten(2)[:, :, ids].transpose(1, 2)
    torch.testing.assert_close(s, rows / (rows.norm(dim=-1, keepdim=True) + 1e-7))
    torch.testing.assert_close(s.norm(dim=-1), torch.ones(2, 6))  # unit norm for O(1) inputs


def test_init_is_deterministic():
    torch.manual_seed(1)
    a = PatchSampleMLP((3, 16))
    torch.manual_seed(1)
    b = PatchSampleMLP((3, 16))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert all(torch.count_nonzero(m[0].bias) == 0 for m in a.mlps)


def test_gradients_reach_every_parameter():
    head = PatchSampleMLP((3, 8), out_channels=16)
    feats = [f.requires_grad_() for f in feats_for((3, 8), [(6, 6), (4, 4)])]
    samples, _ = head(feats, num_patches=8)
    sum((s * torch.randn_like(s)).sum() for s in samples).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert all(f.grad is not None for f in feats)


def test_bad_inputs_raise():
    head = PatchSampleMLP((3, 8))
    good = feats_for((3, 8), [(4, 4), (4, 4)])
    with pytest.raises(ValueError, match="got 1 feature maps for 2 taps"):
        head(good[:1])
    with pytest.raises(
        ValueError,
        match=r"tap 1: expected \(B, 8, H, W\) features, got shape "
        r"\(2, 3, 4, 4\)",
    ):
        head([good[0], good[0]])
    with pytest.raises(ValueError, match="got 1 patch id tensors for 2 taps"):
        head(good, patch_ids=[torch.arange(4)])
    with pytest.raises(ValueError, match=r"tap 0: patch ids must be \(P,\) or \(2, P\)"):
        head(good, patch_ids=[torch.zeros(3, 4, dtype=torch.long)] * 2)
    with pytest.raises(ValueError, match="num_patches must be >= 1, got 0"):
        head(good, num_patches=0)
    with pytest.raises(ValueError, match="non-empty list of positive in_channels"):
        PatchSampleMLP(())
