"""FID / KID: Fréchet distance against closed forms and a direct SciPy formula, feature statistics,
KID against a double loop, the folder -> features pipeline with a small random CNN (NOT Inception),
the statistics cache, and the Inception weights resolution (the real TF-FID weights are never
needed: the one Inception test loads a randomly initialised state dict of the same layout)."""

import os
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from patchcontrast.metrics import (
    InceptionFeatures,
    MissingWeightsError,
    extract_features,
    feature_statistics,
    fid_from_folders,
    frechet_distance,
    kid,
)
from patchcontrast.metrics.fid import (
    FID_WEIGHTS_NAME,
    FID_WEIGHTS_URL,
    WEIGHTS_ENV,
    cached_statistics,
    default_weights_path,
    mmd2_unbiased,
    resolve_inception_weights,
)

METHODS = ("sqrtm", "eigh")


def _random_spd(rng: np.random.Generator, d: int, rank: int | None = None) -> np.ndarray:
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / d


def _direct_fid(mu1, s1, mu2, s2) -> float:
    """The textbook formula, written independently with scipy.linalg.sqrtm."""
    root = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(root).real)


# ------------------------------------------------------------------------------------------------
# Fréchet distance


@pytest.mark.parametrize("method", METHODS)
def test_frechet_matches_direct_scipy_formula(method):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(60, 8)), rng.normal(0.3, 1.5, size=(70, 8))
    stats = (*feature_statistics(a), *feature_statistics(b))
    assert frechet_distance(*stats, method=method) == pytest.approx(_direct_fid(*stats), rel=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_frechet_closed_form_for_diagonal_and_co_rotated_gaussians(method):
    rng = np.random.default_rng(1)
    d = 12
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.1, 3, size=d), rng.uniform(0.1, 3, size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2), method=method)
    assert got == pytest.approx(expected, rel=1e-10)
    # the same covariances rotated by one orthogonal Q commute: the distance is unchanged
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    rotated = frechet_distance(
        q @ mu1, q @ np.diag(s1) @ q.T, q @ mu2, q @ np.diag(s2) @ q.T, method=method
    )
    assert rotated == pytest.approx(expected, rel=1e-8)


def test_frechet_scalar_gaussians_known_value():
    # N(0, 1) vs N(3, 4): 9 + 1 + 4 - 2 * 2 = 10
    assert frechet_distance([0.0], [[1.0]], [3.0], [[4.0]]) == pytest.approx(10.0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("rank", [None, 5])
def test_frechet_identical_statistics_is_exactly_zero(method, rank):
    rng = np.random.default_rng(2)
    mu, sigma = rng.normal(size=40), _random_spd(rng, 40, rank)
    assert frechet_distance(mu, sigma, mu.copy(), sigma.copy(), method=method) == 0.0


@pytest.mark.parametrize("method", METHODS)
def test_frechet_nearly_identical_singular_statistics_not_negative(method):
    # n < d: singular covariances; a float32 round trip perturbs them by rounding only
    rng = np.random.default_rng(3)
    x = rng.normal(size=(20, 64))
    mu1, s1 = x.mean(0), np.cov(x, rowvar=False)
    y = x.astype(np.float32).astype(np.float64) + 1e-9
    mu2, s2 = y.mean(0), np.cov(y, rowvar=False)
    value = frechet_distance(mu1, s1, mu2, s2, method=method)
    assert 0.0 <= value < 1e-6


@pytest.mark.parametrize("rank", [None, 3, 0])
def test_frechet_random_spd_including_singular_is_finite_and_methods_agree(rank):
    rng = np.random.default_rng(4)
    d = 30
    for _ in range(5):
        s1 = _random_spd(rng, d, rank) if rank != 0 else np.zeros((d, d))
        s2 = _random_spd(rng, d, rank) if rank != 0 else np.zeros((d, d))
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        a = frechet_distance(mu1, s1, mu2, s2, method="sqrtm")
        b = frechet_distance(mu1, s1, mu2, s2, method="eigh")
        assert np.isfinite(a) and a >= 0
        assert a == pytest.approx(b, rel=1e-6, abs=1e-8)
    # zero covariances: only the means remain
    assert frechet_distance(mu1, np.zeros((d, d)), mu2, np.zeros((d, d))) == pytest.approx(
        np.sum((mu1 - mu2) ** 2)
    )


def test_frechet_parity_with_pytorch_fid():
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(13)
    stats = (
        *feature_statistics(rng.normal(size=(40, 24))),
        *feature_statistics(rng.normal(0.2, 1.2, size=(50, 24))),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # its sqrtm(disp=False) on SciPy 1.16+
        reference = calculate_frechet_distance(*stats)
    assert frechet_distance(*stats) == pytest.approx(reference, rel=1e-12)


def test_frechet_regularises_a_failed_square_root(monkeypatch):
    """When the first root is not finite, eps * I is added to both covariances (pytorch-fid);
    when the roots stay clearly complex, a ValueError explains it."""
    from patchcontrast.metrics import fid as fid_module

    rng = np.random.default_rng(14)
    mu1, mu2, s1, s2 = (
        rng.normal(size=6),
        rng.normal(size=6),
        _random_spd(rng, 6),
        _random_spd(rng, 6),
    )
    real_sqrtm, calls = fid_module._sqrtm, []

    def nan_first(a):
        calls.append(a.copy())
        return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

    monkeypatch.setattr(fid_module, "_sqrtm", nan_first)
    eps = 1e-3
    value = frechet_distance(mu1, s1, mu2, s2, eps=eps)
    offset = eps * np.eye(6)
    np.testing.assert_allclose(calls[1], (s1 + offset) @ (s2 + offset))
    assert value == pytest.approx(
        np.sum((mu1 - mu2) ** 2)
        + np.trace(s1)
        + np.trace(s2)
        - 2 * np.trace(real_sqrtm(calls[1])).real
    )
    monkeypatch.setattr(fid_module, "_sqrtm", lambda a: real_sqrtm(a) + 0.5j * np.eye(len(a)))
    with pytest.raises(ValueError, match="imaginary part"):
        frechet_distance(mu1, s1, mu2, s2)


def test_frechet_input_errors():
    mu, sigma = np.zeros(3), np.eye(3)
    with pytest.raises(ValueError, match="expected mu"):
        frechet_distance(mu, sigma, np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(mu, sigma, np.array([0, np.nan, 0]), sigma)
    with pytest.raises(ValueError, match="method must be"):
        frechet_distance(mu, sigma, mu + 1, sigma, method="svd")
    with pytest.raises(ValueError, match="positive semi-definite"):
        frechet_distance(mu, -sigma, mu + 0.1, -sigma)


# ------------------------------------------------------------------------------------------------
# Feature statistics


def test_feature_statistics_values_dtype_warning_and_errors():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    mu, sigma = feature_statistics(x)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0))
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False))  # ddof = 1
    with pytest.warns(UserWarning, match="fewer images than feature dimensions"):
        feature_statistics(rng.normal(size=(5, 8)))
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(np.ones((1, 4)))
    with pytest.raises(ValueError, match="2-D"):
        feature_statistics(np.ones(4))


# ------------------------------------------------------------------------------------------------
# KID


def _naive_mmd2(x, y, degree=3, coef0=1.0):
    d = x.shape[1]

    def k(a, b):
        return (sum(a[i] * b[i] for i in range(d)) / d + coef0) ** degree

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_mmd2_and_kid_match_a_double_loop():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(6, 5)), rng.normal(0.5, 1.0, size=(9, 5))
    assert mmd2_unbiased(x, y) == pytest.approx(_naive_mmd2(x, y), rel=1e-12)
    # one subset of the whole (equal-size) sets: the order drawn does not matter
    y = y[:6]
    mean, std = kid(x, y, subsets=1, subset_size=6)
    assert mean == pytest.approx(_naive_mmd2(x, y), rel=1e-12) and std == 0.0


def test_kid_near_zero_for_same_distribution_and_positive_for_shift():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    same, same_std = kid(a, b, subsets=20, subset_size=200)
    shifted, _ = kid(a, b + 0.5, subsets=20, subset_size=200)
    assert abs(same) < 3 * same_std + 1e-3
    assert shifted > 0.05 and shifted > 20 * abs(same)


def test_kid_can_be_slightly_negative_and_is_seeded():
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=(50, 8)), rng.normal(size=(50, 8))
    values = [kid(a, b, subsets=5, subset_size=20, seed=s)[0] for s in range(10)]
    assert min(values) < 0  # unbiased: no positive floor
    assert kid(a, b, subsets=5, subset_size=20, seed=3) == kid(
        a, b, subsets=5, subset_size=20, seed=3
    )
    assert values[0] != values[1]


def test_kid_clips_subset_size_with_warning_and_checks_inputs():
    rng = np.random.default_rng(9)
    a, b = rng.normal(size=(10, 4)), rng.normal(size=(12, 4))
    with pytest.warns(UserWarning, match="clipped to 10"):
        kid(a, b, subsets=2, subset_size=1000)
    with pytest.raises(ValueError, match="feature dimensions differ"):
        kid(a, b[:, :3])
    with pytest.raises(ValueError, match="subsets >= 1"):
        kid(a, b, subsets=0)


# ------------------------------------------------------------------------------------------------
# Folder -> features with a small random CNN (NOT Inception: no weights needed)


class TinyRandomCNN(nn.Module):
    """A randomly initialised stand-in for Inception (it is NOT Inception): like pytorch-fid's
    network it resizes its [0, 1] input bilinearly to a fixed size itself, then (B, 16)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3))

    def forward(self, x):
        x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
        return self.conv(2 * x - 1).mean(dim=(2, 3))


def _noise_image(rng, h, w, mode="RGB"):
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
    return Image.fromarray(array[..., 0] if channels == 1 else array, mode)


@pytest.fixture
def mixed_folder(tmp_path):
    """Mixed formats, sizes and modes; grey.png and grey_rgb.png hold the same picture."""
    rng = np.random.default_rng(10)
    folder = tmp_path / "mixed"
    folder.mkdir()
    _noise_image(rng, 40, 40).save(folder / "a.png")
    _noise_image(rng, 48, 64).save(folder / "b.jpg", quality=95)
    _noise_image(rng, 30, 50).save(folder / "c.jpeg")
    _noise_image(rng, 40, 40).save(folder / "d.bmp")
    _noise_image(rng, 36, 36).save(folder / "e.webp")
    _noise_image(rng, 40, 40, "RGBA").save(folder / "f_rgba.png")
    grey = _noise_image(rng, 44, 33, "L")
    grey.save(folder / "grey.png")
    grey.convert("RGB").save(folder / "grey_rgb.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_extract_features_mixed_formats_sizes_and_modes_with_random_cnn(mixed_folder):
    model = TinyRandomCNN()
    feats = extract_features(mixed_folder, model, batch_size=3, progress=False)
    assert feats.shape == (8, 16) and feats.dtype == np.float32 and np.isfinite(feats).all()
    names = sorted(p.name for p in mixed_folder.iterdir() if p.suffix != ".txt")
    # greyscale is replicated to RGB: same features as its RGB copy
    np.testing.assert_allclose(feats[names.index("grey.png")], feats[names.index("grey_rgb.png")])
    # batching (and splitting batches by image size) does not change any row
    one_by_one = extract_features(mixed_folder, model, batch_size=1, progress=False)
    np.testing.assert_allclose(feats, one_by_one, rtol=1e-5, atol=1e-6)
    # a list of files works too, in the given order
    files = [mixed_folder / "d.bmp", mixed_folder / "a.png"]
    np.testing.assert_allclose(
        extract_features(files, model, progress=False),
        feats[[names.index("d.bmp"), names.index("a.png")]],
        rtol=1e-5,
    )


def test_extract_features_clean_resize_option_with_random_cnn(mixed_folder):
    feats = extract_features(mixed_folder, TinyRandomCNN(), resize=(24, 20), progress=False)
    assert feats.shape == (8, 16) and np.isfinite(feats).all()


def test_extract_features_errors(tmp_path, mixed_folder):
    model = TinyRandomCNN()
    with pytest.raises(ValueError, match="does not exist"):
        extract_features(tmp_path / "nowhere", model, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        extract_features(tmp_path / "empty", model, progress=False)
    (mixed_folder / "zz_broken.png").write_bytes(b"definitely not a png")
    with pytest.raises(ValueError, match="zz_broken.png"):
        extract_features(mixed_folder, model, progress=False)
    with pytest.raises(ValueError, match=r"\(B, d\) tensor"):
        extract_features([mixed_folder / "a.png"], lambda x: x, progress=False)


# ------------------------------------------------------------------------------------------------
# Cache


def _counting(fn):
    calls = []

    def wrapped(paths):
        calls.append(len(paths))
        return fn(paths)

    return wrapped, calls


def test_cache_hit_miss_and_invalidation(tmp_path):
    rng = np.random.default_rng(11)
    folder = tmp_path / "real"
    folder.mkdir()
    for i in range(4):
        _noise_image(rng, 16, 16).save(folder / f"{i}.png")
    compute, calls = _counting(lambda paths: rng.normal(size=(len(paths), 3)))
    cache = tmp_path / "cache"

    first = cached_statistics(folder, "net-a", compute, cache)
    second = cached_statistics(folder, "net-a", compute, cache)
    assert (first.from_cache, second.from_cache, calls) == (False, True, [4])
    np.testing.assert_array_equal(first.features, second.features)
    np.testing.assert_array_equal(first.sigma, second.sigma)

    assert not cached_statistics(folder, "net-b", compute, cache).from_cache  # other network
    _noise_image(rng, 16, 16).save(folder / "4.png")  # an added image
    assert not cached_statistics(folder, "net-a", compute, cache).from_cache
    assert calls == [4, 4, 5]
    _noise_image(rng, 16, 16).save(folder / "0.png")  # a rewritten image, mtime moved on
    os.utime(folder / "0.png", ns=(1, 10**18))
    assert not cached_statistics(folder, "net-a", compute, cache).from_cache
    assert cached_statistics(folder, "net-a", compute, cache).from_cache

    for f in cache.glob("*.npz"):  # damaged entries are recomputed
        f.write_bytes(b"garbage")
    assert not cached_statistics(folder, "net-a", compute, cache).from_cache


def test_fid_from_folders_with_random_cnn_and_cache(tmp_path, mixed_folder):
    rng = np.random.default_rng(12)
    fake = tmp_path / "fake"
    fake.mkdir()
    for i in range(6):
        _noise_image(rng, 40, 40).save(fake / f"{i}.png")
    model = TinyRandomCNN()
    cache = tmp_path / "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # 8 and 6 images < 16 dimensions
        result = fid_from_folders(
            mixed_folder, fake, model=model, cache_dir=cache, kid_subsets=10, progress=False
        )
        again = fid_from_folders(
            mixed_folder, fake, model=model, cache_dir=cache, kid_subsets=10, progress=False
        )
        itself = fid_from_folders(fake, fake, model=model, kid_subsets=10, progress=False)
    assert result == again and len(list(cache.glob("*.npz"))) == 1  # only the real folder
    assert result["fid"] > 0 and np.isfinite(result["kid_mean"])
    assert (result["n_real"], result["n_fake"], result["kid_subset_size"]) == (8, 6, 6)
    assert result["feature_network"] == "TinyRandomCNN"
    assert itself["fid"] == 0.0
    with pytest.raises(ValueError, match="not both"):
        fid_from_folders(mixed_folder, fake, model=model, weights="w.pth")


# ------------------------------------------------------------------------------------------------
# Inception weights: never downloaded


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """An empty torch hub directory and no PATCHCONTRAST_INCEPTION_WEIGHTS."""
    # TORCH_HOME rather than torch.hub.set_dir: set_dir cannot be undone (it pins the hub dir
    # for every later test)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path / "hub"


def test_missing_weights_error_says_what_and_where(hub_dir, tmp_path):
    expected = hub_dir / "checkpoints" / FID_WEIGHTS_NAME
    assert default_weights_path() == expected
    with pytest.raises(MissingWeightsError) as info:
        InceptionFeatures()
    message = str(info.value)
    for part in (
        FID_WEIGHTS_NAME,
        FID_WEIGHTS_URL,
        str(expected),
        "--inception-weights",
        WEIGHTS_ENV,
    ):
        assert part in message
    (tmp_path / "real").mkdir()
    _noise_image(np.random.default_rng(0), 8, 8).save(tmp_path / "real" / "a.png")
    with pytest.raises(MissingWeightsError, match="pt_inception"):
        fid_from_folders(tmp_path / "real", tmp_path / "real", progress=False)
    with pytest.raises(MissingWeightsError, match="given.pth"):
        resolve_inception_weights(tmp_path / "given.pth")


def test_weights_resolution_order(hub_dir, tmp_path, monkeypatch):
    explicit, from_env = tmp_path / "explicit.pth", tmp_path / "env.pth"
    hub = hub_dir / "checkpoints" / FID_WEIGHTS_NAME
    for f in (explicit, from_env, hub):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"")
    assert resolve_inception_weights() == hub
    monkeypatch.setenv(WEIGHTS_ENV, str(from_env))
    assert resolve_inception_weights() == from_env
    assert resolve_inception_weights(explicit) == explicit
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "gone.pth"))
    with pytest.raises(MissingWeightsError, match=WEIGHTS_ENV):
        resolve_inception_weights()


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory):
    """A state dict with the layout of the FID Inception file but RANDOM values (not the TF-FID
    weights): torchvision's Inception-v3 with 1008 classes has the same keys and shapes."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.inception_v3(
        num_classes=1008, aux_logits=False, weights=None, init_weights=False
    )
    path = tmp_path_factory.mktemp("weights") / "random_inception.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.mark.slow
def test_inception_features_load_a_local_file_without_download(hub_dir, random_inception_weights):
    """pytorch-fid's InceptionV3 is built from the local file (random values, NOT the TF-FID
    weights, so no FID value is checked), 2048-d pool3 output, no download attempted."""
    net = InceptionFeatures(random_inception_weights)
    reference = torch.load(random_inception_weights, weights_only=True)
    loaded = net.net.blocks[3][0].branch3x3_1.conv.weight  # Mixed_7a
    torch.testing.assert_close(loaded, reference["Mixed_7a.branch3x3_1.conv.weight"])
    assert not net.train().training
    with torch.inference_mode():
        out = net(torch.rand(1, 3, 37, 53))  # any size: the network resizes to 299 itself
    assert out.shape == (1, 2048) and torch.isfinite(out).all()


def test_inception_features_reject_a_wrong_file(hub_dir, tmp_path):
    wrong = tmp_path / "wrong.pth"
    torch.save(TinyRandomCNN().state_dict(), wrong)
    with pytest.raises(RuntimeError, match="wrong.pth"):
        InceptionFeatures(wrong)
