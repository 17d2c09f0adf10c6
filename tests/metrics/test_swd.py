"""SWD (Progressive GAN / MoNCE): exact zero, monotonicity, a loop-by-loop NumPy reference,
seeding, unequal counts, resizing, folders and errors."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import gaussian_blur

from patchcontrast.data import render_sample
from patchcontrast.metrics import swd, swd_from_folders
from patchcontrast.metrics.swd import (
    descriptor_centres,
    laplacian_pyramid,
    level_sizes,
    projection_directions,
    wasserstein_1d,
)


def _generated(domain: str, n: int, size: int, start: int = 0) -> torch.Tensor:
    """uint8 (n, 3, size, size) generated images."""
    images = [render_sample(domain, start + i, size=size)[0] for i in range(n)]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


# ------------------------------------------------------------------------------------------------
# A separate, deliberately naive reference written from docs/design.md §6.2 (loops everywhere).

_FILTER = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.0


def _naive_filter(image: np.ndarray) -> np.ndarray:
    """5x5 binomial filter of (C, H, W) with mirror boundary (d c b | a b c d | c b a)."""
    c, h, w = image.shape
    padded = np.pad(image, ((0, 0), (2, 2), (2, 2)), mode="reflect")
    out = np.zeros_like(image)
    for dy in range(5):
        for dx in range(5):
            out += _FILTER[dy, dx] * padded[:, dy : dy + h, dx : dx + w]
    return out


def _naive_pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    gaussian = [image]
    for _ in range(levels - 1):
        gaussian.append(_naive_filter(gaussian[-1])[:, ::2, ::2])
    bands = []
    for k in range(levels - 1):
        c, h, w = gaussian[k + 1].shape
        zeros = np.zeros((c, 2 * h, 2 * w))
        for y in range(h):
            for x in range(w):
                zeros[:, 2 * y, 2 * x] = gaussian[k + 1][:, y, x]
        bands.append(gaussian[k] - 4 * _naive_filter(zeros))
    return bands + [gaussian[-1]]


def _naive_w1(a: np.ndarray, b: np.ndarray) -> float:
    """W1 of two 1-D samples: replicate each to m * n points, then mean |sorted difference|."""
    a_rep = np.sort(np.repeat(a, len(b)))
    b_rep = np.sort(np.repeat(b, len(a)))
    return float(np.mean(np.abs(a_rep - b_rep)))


def _naive_swd(
    real: np.ndarray, fake: np.ndarray, centres: list[np.ndarray], directions: list[np.ndarray]
) -> list[float]:
    """SWD x1e3 per level; centres[k] (max(N), T, 2), directions[k] (R, 147, D) given."""
    levels = len(centres)
    per_level = []
    for k in range(levels):
        sets = []
        for images in (real, fake):
            descriptors = []
            for i, image in enumerate(images):
                band = _naive_pyramid(image.astype(np.float64), levels)[k]
                for y, x in centres[k][i]:
                    descriptors.append(band[:, y - 3 : y + 4, x - 3 : x + 4].reshape(3, 49))
            d = np.array(descriptors)  # (M, 3, 49)
            for c in range(3):
                d[:, c] = (d[:, c] - d[:, c].mean()) / d[:, c].std()
            sets.append(d.reshape(len(d), 147))
        dists = []
        for repeat in directions[k]:
            for j in range(repeat.shape[1]):
                dists.append(_naive_w1(sets[0] @ repeat[:, j], sets[1] @ repeat[:, j]))
        per_level.append(1e3 * float(np.mean(dists)))
    return per_level


@pytest.mark.parametrize("n_fake", [4, 3])
def test_matches_naive_numpy_reference(n_fake):
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (4, 3, 32, 32)).astype(np.uint8)
    fake = (real[:n_fake] // 2 + rng.integers(0, 128, (n_fake, 3, 32, 32))).astype(np.uint8)
    per_image, dirs, repeats, seed = 8, 6, 2, 5
    sizes = level_sizes(32, 32)
    centres = [descriptor_centres(seed, k, 4, s, per_image).numpy() for k, s in enumerate(sizes)]
    directions = [projection_directions(seed, k, repeats, dirs).numpy() for k in range(2)]
    expected = _naive_swd(real, fake, centres, directions)
    got = swd(
        torch.from_numpy(real),
        torch.from_numpy(fake),
        seed=seed,
        descriptors_per_image=per_image,
        directions=dirs,
        repeats=repeats,
    )
    assert list(got) == ["swd_32", "swd_16", "swd_avg"]
    assert got["swd_32"] == pytest.approx(expected[0], rel=1e-9)
    assert got["swd_16"] == pytest.approx(expected[1], rel=1e-9)
    assert got["swd_avg"] == pytest.approx(np.mean(expected), rel=1e-9)


def test_pyramid_matches_naive_and_reconstructs():
    image = np.random.default_rng(1).uniform(0, 255, (1, 3, 32, 32))
    bands = laplacian_pyramid(torch.from_numpy(image), 3)
    for got, expected in zip(bands, _naive_pyramid(image[0], 3)):
        np.testing.assert_allclose(got[0].numpy(), expected, atol=1e-10)
    assert [tuple(b.shape[-2:]) for b in bands] == [(32, 32), (16, 16), (8, 8)]


def test_wasserstein_1d_is_exact_for_unequal_counts():
    rng = np.random.default_rng(2)
    for m, n in [(5, 7), (7, 5), (6, 6), (1, 4), (12, 8)]:
        a, b = rng.standard_normal((3, m)), rng.standard_normal((3, n)) + 0.5
        got = wasserstein_1d(torch.from_numpy(np.sort(a)), torch.from_numpy(np.sort(b)))
        expected = [_naive_w1(a[i], b[i]) for i in range(3)]
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


# ------------------------------------------------------------------------------------------------
# Behaviour on generated images


@pytest.fixture(scope="module")
def zebras() -> torch.Tensor:
    return _generated("B", 12, 64)


def test_identical_sets_give_exactly_zero(zebras):
    result = swd(zebras, zebras.clone(), seed=3)
    assert list(result) == ["swd_64", "swd_32", "swd_16", "swd_avg"]
    assert all(v == 0.0 for v in result.values())


def test_independent_centres(zebras):
    # Upstream-like: the fake set gets its own centres, so identical sets give the noise floor.
    floor = swd(zebras, zebras, centres="independent")["swd_avg"]
    cross = swd(zebras, _generated("A", 12, 64), centres="independent")["swd_avg"]
    assert 0 < floor < cross / 4
    with pytest.raises(ValueError, match="centres must be one of"):
        swd(zebras, zebras, centres="random")


def test_same_domain_is_closer_than_other_domain(zebras):
    other_zebras, horses = _generated("B", 12, 64, start=100), _generated("A", 12, 64)
    same, cross = swd(zebras, other_zebras)["swd_avg"], swd(zebras, horses)["swd_avg"]
    assert 0 < same < cross / 2


def test_increases_with_noise(zebras):
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(zebras.shape, generator=g)
    scores = [
        swd(zebras, (zebras + sigma * noise).clamp(0, 255))["swd_avg"]
        for sigma in (4.0, 12.0, 36.0)
    ]
    assert 0 < scores[0] < scores[1] < scores[2]


def test_increases_with_blur(zebras):
    scores = [
        swd(zebras, gaussian_blur(zebras.float(), [9, 9], [sigma]))["swd_avg"]
        for sigma in (0.5, 1.0, 2.0)
    ]
    assert 0 < scores[0] < scores[1] < scores[2]


def test_seeded_reproducible_and_seed_sensitive(zebras):
    horses = _generated("A", 12, 64)
    first, again = swd(zebras, horses, seed=7), swd(zebras, horses, seed=7)
    assert first == again
    other = swd(zebras, horses, seed=8)
    assert other != first
    assert other["swd_avg"] == pytest.approx(first["swd_avg"], rel=0.2)


def test_invariant_to_affine_intensity_change_of_a_set(zebras):
    # Each set is normalised with its own statistics (upstream), so this is 0 up to rounding.
    result = swd(zebras, zebras.double() / 255 * 0.5 + 0.1)
    assert result["swd_avg"] < 1e-6


def test_unequal_counts(zebras):
    horses = _generated("A", 5, 64)
    forward, backward = swd(zebras, horses), swd(horses, zebras)
    assert all(math.isfinite(v) and v > 0 for v in forward.values())
    for key in forward:  # W1 is symmetric; the centres are shared image by image
        assert forward[key] == pytest.approx(backward[key], rel=1e-9)
    # The real set's descriptors do not depend on the fake set's size: a 1-image fake set works.
    assert swd(zebras, horses[:1])["swd_avg"] > 0


def test_mixed_sizes_need_size_and_get_resized(zebras):
    small = _generated("A", 3, 48)
    mixed = list(small) + list(_generated("A", 3, 64))
    with pytest.raises(ValueError, match=r"mixes image sizes .*pass size="):
        swd(zebras, mixed)
    with pytest.raises(ValueError, match=r"real images are \(64, 64\) but fake .*\(48, 48\)"):
        swd(zebras, small)
    resized = swd(zebras, mixed, size=64)
    assert list(resized) == ["swd_64", "swd_32", "swd_16", "swd_avg"]
    # Images already at the target size are not touched.
    assert swd(zebras, zebras[:4], size=64) == swd(zebras, zebras[:4])
    assert list(swd(zebras, small, size=(32, 48))) == ["swd_32x48", "swd_16x24", "swd_avg"]


def test_level_sizes():
    assert level_sizes(256, 256) == [(256, 256), (128, 128), (64, 64), (32, 32), (16, 16)]
    assert level_sizes(100, 100) == [(100, 100), (50, 50), (25, 25)]
    assert level_sizes(31, 64) == [(31, 64), (16, 32)]
    assert level_sizes(16, 16) == [(16, 16)]


def test_odd_sizes_work():
    a, b = _generated("A", 3, 37), _generated("B", 3, 37)
    assert list(swd(a, b)) == ["swd_37", "swd_19", "swd_avg"]


def test_folders_match_tensors_and_resize(tmp_path, zebras):
    horses = _generated("A", 5, 48)
    for name, images in (("real", zebras[:6]), ("fake", horses)):
        (tmp_path / name).mkdir()
        for i, image in enumerate(images):
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / name / f"{i:03d}.png")
    from_folders = swd_from_folders(
        tmp_path / "real", tmp_path / "fake", size=32, progress=False, batch_size=4
    )
    assert from_folders == swd(zebras[:6], horses, size=32)
    with pytest.raises(ValueError, match="pass size="):
        swd_from_folders(tmp_path / "real", tmp_path / "fake", size=None, progress=False)
    same = swd_from_folders(tmp_path / "real", tmp_path / "real", size=None, progress=False)
    assert list(same) == ["swd_64", "swd_32", "swd_16", "swd_avg"] and same["swd_avg"] == 0


def test_errors(tmp_path, zebras):
    with pytest.raises(ValueError, match="real is empty"):
        swd([], zebras)
    with pytest.raises(ValueError, match="at least 16 px"):
        swd(zebras[:, :, :15], zebras[:, :, :15])
    with pytest.raises(ValueError, match=r"fake\[0\] must be a \(3, H, W\) RGB tensor"):
        swd(zebras, [zebras[0, :1]])
    with pytest.raises(ValueError, match="must be .N, 3, H, W."):
        swd(zebras[0], zebras)
    with pytest.raises(ValueError, match="directions must be a positive int"):
        swd(zebras, zebras, directions=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images in"):
        swd_from_folders(tmp_path / "empty", tmp_path / "empty", progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        swd_from_folders(tmp_path / "missing", tmp_path / "empty", progress=False)
