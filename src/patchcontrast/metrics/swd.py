"""Sliced Wasserstein distance (SWD) between two image sets, as Progressive GAN defines it and the
MoNCE paper reports it (docs/design.md §6.2; Karras et al., ICLR 2018, appendix D).

For every pyramid level, the distribution of local 7x7x3 patches of the real set is compared with
that of the fake set:

1. Laplacian pyramid of each image: ``G_0`` = the image (0-255 scale), ``G_{k+1} = down(G_k)``
   (5x5 binomial filter ``[1,4,6,4,1]^T [1,4,6,4,1] / 256`` with mirror boundary, then every second
   pixel); level ``k`` is the band-pass ``G_k - up(G_{k+1})`` (zeros inserted between pixels, the
   same filter x4), the last level is the coarsest ``G``. Levels go down while both sides are
   >= 16 px, so 256 px gives 256, 128, 64, 32, 16.
2. ``descriptors_per_image`` neighbourhoods of 7x7x3 (147 values) per image and level, at uniformly
   random centres (with replacement) at least 3 px from the border.
3. Per level, each set is normalised with its *own* per-channel mean and (population) std over all
   of its descriptors, as upstream.
4. ``repeats x directions`` random unit directions (normalised Gaussians, new ones per level); the
   1-D Wasserstein-1 distance between the projected sets, averaged over directions and repeats,
   x1e3 per level (``swd_<res>``), and the mean over levels (``swd_avg``).

Differences from upstream (docs/design.md §7.5), all deliberate:

- Seeded: centres and directions come from ``numpy.random.default_rng([seed, stream, level])``.
  With ``centres="shared"`` (default) image ``i`` of the real set and image ``i`` of the fake set
  get the same centres, so identical sets give exactly 0; the real set's descriptors never depend
  on the fake set. Shared centres lower the value for *paired* sets (a fake image close to the
  real image of the same index, e.g. a reconstruction): ``centres="independent"`` draws the fake
  set's centres from their own stream, as upstream's two unseeded draws do; identical sets then
  give the estimator's noise floor instead of 0. For unpaired sets (translations vs. unrelated
  real images, the papers' use) both have the same expectation.
- Unequal set sizes (upstream asserts equal counts): step 4 uses the exact 1-D Wasserstein-1
  distance between the two empirical distributions (quantile matching, ``wasserstein_1d``). For
  equal counts it *is* upstream's mean |sorted a - sorted b|; for unequal counts it uses every
  descriptor and adds no randomness, where subsampling the larger set would throw data away and
  make the result depend on one more random draw.
- Any image size: levels stop when a side drops below 16 px; an odd side ``n`` goes down to
  ``ceil(n / 2)`` and the upsampled coarser level is built on the finer grid (zeros at odd
  positions), which is upstream's operation whenever the size is even. Non-square levels are
  named ``swd_<H>x<W>``.
- Sets of different image sizes are resized to one ``size`` the caller gives (bilinear,
  antialiased when shrinking); ``swd_from_folders`` defaults to 256x256 like upstream, ``swd``
  refuses mixed sizes without ``size``.
- Float64 throughout (upstream float32); the difference is far below the run-to-run spread.

Because of step 3, the result is invariant to a per-set affine change of intensities (a uniformly
darker fake set is not penalised); float inputs may therefore be in any range.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.functional import pil_to_tensor
from tqdm import tqdm

from ..data.folders import list_images, load_image, parse_size

MIN_SIZE = 16  # smallest pyramid level side (upstream: levels 256 ... 16)
RADIUS = 3  # 7x7 neighbourhoods
DESCRIPTOR_DIM = 3 * (2 * RADIUS + 1) ** 2  # 147
_BINOMIAL = (1.0, 4.0, 6.0, 4.0, 1.0)  # 1-D factor of the 5x5 filter, / 16

ImageSet = Tensor | Sequence[Tensor]
Centres = Literal["shared", "independent"]
CENTRES = ("shared", "independent")


def level_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """(H, W) of every pyramid level: halve (rounding up) while both sides stay >= 16."""
    if min(height, width) < MIN_SIZE:
        raise ValueError(
            f"images are {height}x{width}; SWD needs at least {MIN_SIZE} px on each "
            "side (pass a larger size= to resize them)"
        )
    sizes = []
    while min(height, width) >= MIN_SIZE:
        sizes.append((height, width))
        height, width = -(-height // 2), -(-width // 2)
    return sizes


def _binomial_blur(x: Tensor, gain: float = 1.0, stride: int = 1) -> Tensor:
    """5x5 binomial filter with mirror boundary on (N, C, H, W), separably as five shifted
    in-place multiply-adds per axis (several times faster on CPU than a depthwise conv);
    ``stride`` 2 keeps every second output pixel (``blur(x)[..., ::2, ::2]``) without computing
    the others."""
    h, w = x.shape[-2:]
    x = F.pad(x, (2, 2, 2, 2), mode="reflect")  # torch "reflect" = scipy "mirror": d c b|a b c d
    rows = x[..., 0:w:stride] * (_BINOMIAL[0] / 16)
    for k in range(1, 5):
        rows.add_(x[..., k : k + w : stride], alpha=_BINOMIAL[k] / 16)
    out = rows[..., 0:h:stride, :] * (_BINOMIAL[0] * gain / 16)
    for k in range(1, 5):
        out.add_(rows[..., k : k + h : stride, :], alpha=_BINOMIAL[k] * gain / 16)
    return out


def laplacian_pyramid(images: Tensor, levels: int) -> list[Tensor]:
    """Band-pass levels of (N, C, H, W) images, finest first; the last one is the coarsest
    Gaussian level. Level sizes are those of ``level_sizes``."""
    gaussian = [images]
    for _ in range(levels - 1):
        gaussian.append(_binomial_blur(gaussian[-1], stride=2))
    out = []
    for fine, coarse in zip(gaussian[:-1], gaussian[1:]):
        up = torch.zeros_like(fine)
        up[..., ::2, ::2] = coarse  # ceil(n / 2) even positions hold the coarse pixels
        out.append(fine - _binomial_blur(up, gain=4.0))
    return out + [gaussian[-1]]


def descriptor_centres(
    seed: int, level: int, n_images: int, size: tuple[int, int], per_image: int, stream: int = 0
) -> Tensor:
    """Random (y, x) centres, int64 (n_images, per_image, 2), uniform on [3, H-3) x [3, W-3).

    Image ``i`` gets the same centres whatever ``n_images`` is (one uniform draw per value, in
    order), so two sets drawn from one ``stream`` share them image by image. Streams: 0 = both
    sets (``centres="shared"``) or the real set, 2 = the fake set with ``"independent"``.
    """
    u = np.random.default_rng([seed, stream, level]).random((n_images, per_image, 2))
    span = np.array(size) - 2 * RADIUS
    return torch.from_numpy(RADIUS + np.minimum((u * span).astype(np.int64), span - 1))


def projection_directions(seed: int, level: int, repeats: int, directions: int) -> Tensor:
    """Random unit directions, float64 (repeats, 147, directions): normalised Gaussians."""
    g = np.random.default_rng([seed, 1, level]).standard_normal(
        (repeats, DESCRIPTOR_DIM, directions)
    )
    return torch.from_numpy(g / np.linalg.norm(g, axis=1, keepdims=True))


def _neighbourhoods(level: Tensor, centres: Tensor) -> Tensor:
    """Patches around ``centres`` (N, T, 2) of a (N, 3, H, W) level -> (N * T, 3, 7 * 7)."""
    offsets = torch.arange(-RADIUS, RADIUS + 1, device=level.device)
    centres = centres.to(level.device)
    ys = centres[..., 0, None, None] + offsets[:, None]  # (N, T, 7, 1)
    xs = centres[..., 1, None, None] + offsets[None, :]  # (N, T, 1, 7)
    n = torch.arange(level.shape[0], device=level.device).view(-1, 1, 1, 1)
    patches = level[n, :, ys, xs]  # advanced indices first: (N, T, 7, 7, 3)
    return patches.permute(0, 1, 4, 2, 3).reshape(-1, 3, (2 * RADIUS + 1) ** 2)


def _normalise(descriptors: Tensor) -> Tensor:
    """(M, 3, 49) -> (M, 147), each channel standardised over the whole set (population std).

    A constant channel (std 0, e.g. an all-black set) is left at 0 rather than divided by 0.
    """
    mean = descriptors.mean(dim=(0, 2), keepdim=True)
    std = descriptors.std(dim=(0, 2), keepdim=True, correction=0)
    return ((descriptors - mean) / std.clamp_min(1e-12)).flatten(1)


def wasserstein_1d(a: Tensor, b: Tensor) -> Tensor:
    """Exact W1 between empirical distributions along the last dim: (..., m), (..., n), both
    sorted -> (...).

    ``W1 = integral_0^1 |F_a^-1(t) - F_b^-1(t)| dt``; both quantile functions are steps, constant
    between the merged breakpoints ``i / m`` and ``j / n`` (integers ``i n`` and ``j m`` in units
    of ``1 / (m n)``). For m = n this is ``mean |a - b|``, upstream's formula.
    """
    m, n = a.shape[-1], b.shape[-1]
    if m == n:
        return (a - b).abs().mean(-1)
    ends = torch.cat([torch.arange(1, m + 1) * n, torch.arange(1, n + 1) * m]).sort().values
    widths = torch.diff(ends, prepend=ends.new_zeros(1)).to(a) / (m * n)
    # quantile index of each step (e_{k-1}, e_k]: ceil(e_k / n) - 1 for a, ceil(e_k / m) - 1 for b
    ia, ib = ((ends - 1) // n).to(a.device), ((ends - 1) // m).to(a.device)
    return ((a[..., ia] - b[..., ib]).abs() * widths).sum(-1)


def _level_key(size: tuple[int, int]) -> str:
    h, w = size
    return f"swd_{h}" if h == w else f"swd_{h}x{w}"


def _set_descriptors(
    batches: Iterable[Tensor],
    n_images: int,
    sizes: list[tuple[int, int]],
    per_image: int,
    seed: int,
    stream: int,
) -> list[Tensor]:
    """Normalised descriptors of one set, per level: (n_images * per_image, 147) each."""
    centres = [
        descriptor_centres(seed, k, n_images, s, per_image, stream) for k, s in enumerate(sizes)
    ]
    found: list[list[Tensor]] = [[] for _ in sizes]
    start = 0
    for batch in batches:
        pyramid = laplacian_pyramid(batch, len(sizes))
        for k, level in enumerate(pyramid):
            found[k].append(_neighbourhoods(level, centres[k][start : start + len(batch)]))
        start += len(batch)
    return [_normalise(torch.cat(d)) for d in found]


def _distances(
    real: list[Tensor],
    fake: list[Tensor],
    sizes: list[tuple[int, int]],
    seed: int,
    directions: int,
    repeats: int,
) -> dict[str, float]:
    out = {}
    for k, size in enumerate(sizes):
        dirs = projection_directions(seed, k, repeats, directions).to(real[k].device)
        per_repeat = []
        for d in dirs:  # one repeat at a time bounds the memory: (directions, M) projections
            # (directions, M) layout: sorting along the contiguous last dim is faster
            pa = (d.T @ real[k].T).sort(dim=-1).values
            pb = (d.T @ fake[k].T).sort(dim=-1).values
            per_repeat.append(wasserstein_1d(pa, pb).mean())
        out[_level_key(size)] = 1e3 * float(torch.stack(per_repeat).mean())
    out["swd_avg"] = sum(out.values()) / len(out)
    return out


def _check_options(
    descriptors_per_image: int, directions: int, repeats: int, centres: Centres
) -> list[int]:
    """Validate the options; return the centre streams of the real and the fake set."""
    if centres not in CENTRES:
        raise ValueError(f"centres must be one of {CENTRES}, got {centres!r}")
    for name, value in (
        ("descriptors_per_image", descriptors_per_image),
        ("directions", directions),
        ("repeats", repeats),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    return [0, 0] if centres == "shared" else [0, 2]


def _resize(image: Tensor, size: tuple[int, int] | None) -> Tensor:
    """(N, 3, H, W) float64 -> ``size`` (bilinear, antialiased when shrinking); None keeps it."""
    if size is None or tuple(image.shape[-2:]) == size:
        return image
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)


def _as_items(images: ImageSet, name: str, size: tuple[int, int] | None) -> list[Tensor]:
    """Check a set, (N, 3, H, W) tensor or list of (3, H, W) ones; return its images (views, no
    copy: conversion to float64 happens batch by batch)."""
    if isinstance(images, Tensor) and images.dim() != 4:
        raise ValueError(
            f"{name} must be (N, 3, H, W) or a list of (3, H, W) images, "
            f"got a tensor of shape {tuple(images.shape)}"
        )
    items = list(images.unbind(0)) if isinstance(images, Tensor) else list(images)
    if not items:
        raise ValueError(f"{name} is empty: SWD needs at least 1 image per set")
    for i, image in enumerate(items):
        if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
            shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"{name}[{i}] must be a (3, H, W) RGB tensor, got {shape}")
        if image.is_complex() or image.dtype == torch.bool:
            raise ValueError(f"{name}[{i}] must be uint8 or float, got {image.dtype}")
    shapes = {tuple(x.shape[-2:]) for x in items}
    if size is None and len(shapes) > 1:
        raise ValueError(
            f"{name} mixes image sizes {sorted(shapes)}; pass size=(H, W) to resize "
            "them all (bilinear)"
        )
    return items


def _tensor_batches(
    items: list[Tensor], size: tuple[int, int] | None, batch_size: int, device: torch.device
) -> Iterator[Tensor]:
    """float64 (B, 3, H, W) batches on ``device``, resized to ``size``."""
    for start in range(0, len(items), batch_size):
        yield torch.cat(
            [
                _resize(x[None].to(device, torch.float64), size)
                for x in items[start : start + batch_size]
            ]
        )


@torch.no_grad()
def swd(
    real: ImageSet,
    fake: ImageSet,
    *,
    seed: int = 0,
    descriptors_per_image: int = 128,
    directions: int = 128,
    repeats: int = 4,
    size: int | tuple[int, int] | None = None,
    centres: Centres = "shared",
    batch_size: int = 32,
) -> dict[str, float]:
    """SWD x1e3 per pyramid level and their mean between two image sets.

    ``real``/``fake``: uint8 or float (N, 3, H, W) tensors or lists of (3, H, W) tensors, any
    value range (see the module docstring), any counts >= 1. With ``size`` every image is resized
    to it first (bilinear); without it all images must share one size. Computed in batches of
    ``batch_size`` on the device of ``real``. Example::

        scores = swd(real_b, fake_b, seed=0)  # {"swd_256": ..., ..., "swd_16": ..., "swd_avg": ...}
    """
    streams = _check_options(descriptors_per_image, directions, repeats, centres)
    target = None if size is None else parse_size(size, "size")
    sets = [_as_items(real, "real", target), _as_items(fake, "fake", target)]
    shape_a, shape_b = (target or tuple(items[0].shape[-2:]) for items in sets)
    if shape_a != shape_b:
        raise ValueError(
            f"real images are {shape_a} but fake images are {shape_b}; pass "
            "size=(H, W) to compare them at one size"
        )
    sizes = level_sizes(*shape_a)
    device = sets[0][0].device
    desc = [
        _set_descriptors(
            _tensor_batches(items, target, batch_size, device),
            len(items),
            sizes,
            descriptors_per_image,
            seed,
            stream,
        )
        for items, stream in zip(sets, streams)
    ]
    return _distances(*desc, sizes, seed, directions, repeats)


def _folder_batches(
    paths: list[Path],
    size: tuple[int, int] | None,
    shape: tuple[int, int],
    batch_size: int,
    bar: tqdm,
    device: torch.device,
) -> Iterator[Tensor]:
    """Load images batch by batch as float64 (B, 3, H, W), resized to ``size``; without ``size``
    every image must be ``shape``."""
    for start in range(0, len(paths), batch_size):
        batch = []
        for path in paths[start : start + batch_size]:
            image = _resize(pil_to_tensor(load_image(path))[None].to(device, torch.float64), size)
            if tuple(image.shape[-2:]) != shape:
                raise ValueError(
                    f"{path} is {tuple(image.shape[-2:])}, the first image is "
                    f"{shape}; pass size=(H, W) to resize them all"
                )
            batch.append(image)
            bar.update()
        yield torch.cat(batch)


def _first_size(path: Path) -> tuple[int, int]:
    return tuple(load_image(path).size[::-1])  # PIL gives (W, H)


@torch.no_grad()
def swd_from_folders(
    real_dir: str | Path,
    fake_dir: str | Path,
    *,
    size: int | tuple[int, int] | None = 256,
    seed: int = 0,
    descriptors_per_image: int = 128,
    directions: int = 128,
    repeats: int = 4,
    centres: Centres = "shared",
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, float]:
    """``swd`` between the images of two folders (png/jpg/... files, sorted by name).

    Every image is resized to ``size`` (default 256x256, upstream's only size; bilinear,
    antialiased) or, with ``size=None``, must already share one size. Counts may differ. Images
    are read in batches of ``batch_size``, so memory holds only the descriptors. Example::

        swd_from_folders("results/images/real_B", "results/images/fake_B")
    """
    streams = _check_options(descriptors_per_image, directions, repeats, centres)
    sets = [list_images(real_dir), list_images(fake_dir)]
    target = None if size is None else parse_size(size, "size")
    shape = target or _first_size(sets[0][0])
    if target is None and _first_size(sets[1][0]) != shape:
        raise ValueError(
            f"{sets[0][0]} is {shape} but {sets[1][0]} is "
            f"{_first_size(sets[1][0])}; pass size=(H, W)"
        )
    sizes = level_sizes(*shape)
    device = torch.device(device)
    desc = []
    with tqdm(total=sum(map(len, sets)), desc="SWD", unit="img", disable=not progress) as bar:
        for paths, stream in zip(sets, streams):
            batches = _folder_batches(paths, target, shape, batch_size, bar, device)
            desc.append(
                _set_descriptors(batches, len(paths), sizes, descriptors_per_image, seed, stream)
            )
    return _distances(*desc, sizes, seed, directions, repeats)
