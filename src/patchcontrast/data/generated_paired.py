"""Built-in generated paired data: label maps of textured regions and their photos.

The default paired set for tests and the demo (nothing is downloaded). A label map holds a
background class (sky), often a ground region under a wavy horizon and a few random rectangles,
ellipses and blobs of other classes, larger ones drawn first. Each class is rendered with its own
two-colour family and texture (bricks, grass streaks, water waves, sand speckles, wood grain,
metal sheen, flower dots) at a class-specific frequency; every image jitters hue, brightness,
texture period, phase, orientation and strength and adds a soft global light gradient and noise.
A generator therefore has to learn label -> *texture*, not a per-class colour lookup.

Every sample is a pure function of ``(seed, index)`` for a given size; all geometry is drawn in
relative coordinates and texture periods scale with the image side, so two sizes of one index show
the same scene. The random stream is seeded with ``(seed, 2, index)``, disjoint from the unpaired
generator's ``(seed, 0 | 1, index)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .folders import parse_size
from .generated import TEST_OFFSET, _check_counts, _claim_root, _upsample, _write_png

GENERATED_CLASSES = ("sky", "brick", "grass", "water", "sand", "wood", "metal", "flowers")
GENERATED_LABEL_NC = len(GENERATED_CLASSES)
# Bump when the rendering changes, so that written datasets are not mixed with new renders.
PAIRED_RENDER_VERSION = 1
_STREAM = 2  # second entry of the seed sequence (unpaired A/B use 0/1)

# (base colour, second colour) per class; a texture weight t in [0, 1] mixes them.
_COLOURS = np.array(
    [
        [[120, 170, 230], [215, 230, 250]],  # sky: blue -> white clouds
        [[170, 60, 40], [205, 195, 185]],  # brick: red bricks, light mortar
        [[40, 110, 30], [120, 185, 60]],  # grass: dark and light blades
        [[20, 60, 140], [90, 170, 210]],  # water: deep blue, light wave crests
        [[205, 175, 115], [140, 110, 65]],  # sand: tan, dark speckles
        [[140, 85, 40], [75, 40, 20]],  # wood: brown, dark grain
        [[105, 110, 120], [225, 228, 235]],  # metal: grey, bright sheen
        [[150, 40, 120], [250, 180, 225]],  # flowers: magenta, pink dots
    ],
    dtype=np.float32,
)

Texture = Callable[[np.random.Generator, np.ndarray, np.ndarray, float], np.ndarray]


def _upsampled_noise(
    rng: np.random.Generator, cells: tuple[int, int], h: int, w: int
) -> np.ndarray:
    """Smooth noise (h, w): a (gh, gw) Gaussian grid, bilinearly interpolated."""
    return _upsample(rng.standard_normal(cells).astype(np.float32), h, w)


def _rotated(
    rng: np.random.Generator, x: np.ndarray, y: np.ndarray, spread: float, base: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates turned by ``base`` + U(-spread, spread) radians: (along, across)."""
    a = base + rng.uniform(-spread, spread)
    return x * math.cos(a) + y * math.sin(a), y * math.cos(a) - x * math.sin(a)


# Textures: (rng, x, y, s) -> weight of the second colour, (H, W) in [0, 1]. x, y are pixel
# coordinates (H, W) and s = pixels per unit of a 64-px image, so periods are given at 64 px
# (all >= 4 px there: finer patterns alias and a small generator cannot learn them).


def _sky(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, s: float) -> np.ndarray:
    h, w = x.shape
    clouds = _upsampled_noise(rng, (4, 6), h, w)
    return np.clip(0.55 - y / (64 * s) * 0.6 + 0.3 * clouds, 0, 1)  # lighter near the top


def _bricks(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, s: float) -> np.ndarray:
    height = 6 * s * rng.uniform(0.85, 1.2)
    length = 2 * height
    y0 = y + rng.uniform(0, height)
    row = np.floor(y0 / height)
    u = (x + rng.uniform(0, length) + 0.5 * length * (row % 2)) % length  # staggered rows
    mortar = (y0 % height < max(1.0, 0.2 * height)) | (u < max(1.0, 0.1 * length))
    return mortar.astype(np.float32)


def _grass(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, s: float) -> np.ndarray:
    h, w = x.shape
    blade = max(1, round(4 * s))  # blades: noise stretched vertically
    streaks = np.repeat(rng.standard_normal((-(-h // blade), w)).astype(np.float32), blade, 0)
    return np.clip(0.5 + 0.3 * streaks[:h], 0, 1)


def _water(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, s: float) -> np.ndarray:
    period = 8 * s * rng.uniform(0.85, 1.2)
    across, along = _rotated(rng, x, y, 0.3, base=math.pi / 2)  # waves run roughly horizontally
    phase = 1.5 * np.sin(2 * math.pi * along / (5 * period) + rng.uniform(0, 2 * math.pi))
    return (0.5 + 0.5 * np.sin(2 * math.pi * across / period + phase)) ** 2


def _sand(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, s: float) -> np.ndarray:
    h, w = x.shape
    grain = max(1, round(s))
    speckles = rng.random((-(-h // grain), -(-w // grain))) < 0.18
    return np.repeat(np.repeat(speckles, grain, 0), grain, 1)[:h, :w].astype(np.float32)


def _wood(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, s: float) -> np.ndarray:
    period = 5 * s * rng.uniform(0.85, 1.2)
    across, along = _rotated(rng, x, y, 0.25)  # grain runs roughly vertically
    wobble = 0.6 * period * np.sin(2 * math.pi * along / (6 * period) + rng.uniform(0, 6.3))
    return (0.5 + 0.5 * np.sin(2 * math.pi * (across + wobble) / period)) ** 3


def _metal(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, s: float) -> np.ndarray:
    period = 40 * s * rng.uniform(0.8, 1.25)  # one broad sheen band per region
    across, _ = _rotated(rng, x, y, math.pi)
    return (0.5 + 0.5 * np.cos(2 * math.pi * across / period + rng.uniform(0, 6.3))) ** 4


def _flowers(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, s: float) -> np.ndarray:
    spacing = 9 * s * rng.uniform(0.85, 1.2)
    u, v = _rotated(rng, x, y, math.pi)
    u, v = u + rng.uniform(0, spacing), v + rng.uniform(0, spacing)
    du, dv = u % spacing - spacing / 2, v % spacing - spacing / 2
    radius = 0.3 * spacing
    return np.clip(radius - np.hypot(du, dv) + 0.5, 0, 1)  # dots with a 1-px soft edge


_TEXTURES: tuple[Texture, ...] = (_sky, _bricks, _grass, _water, _sand, _wood, _metal, _flowers)


def _hue_rotation(angle: float) -> np.ndarray:
    """3x3 rotation about the grey axis (1, 1, 1)/sqrt(3) (Rodrigues): shifts hue, keeps grey."""
    n = np.full(3, 1 / math.sqrt(3))
    cross = np.array([[0, -n[2], n[1]], [n[2], 0, -n[0]], [-n[1], n[0], 0]])
    return (
        math.cos(angle) * np.eye(3)
        + math.sin(angle) * cross
        + (1 - math.cos(angle)) * np.outer(n, n)
    ).astype(np.float32)


def _label_map(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """uint8 (H, W) class ids: sky, an optional ground under a wavy horizon, then 2-5 shapes."""
    h, w = x.shape
    u, v = (x + 0.5) / w, (y + 0.5) / h  # relative coordinates in (0, 1)
    label = np.zeros((h, w), np.uint8)
    if rng.random() < 0.7:
        ground = rng.choice([2, 3, 4])  # grass, water or sand
        horizon = rng.uniform(0.45, 0.75) + 0.05 * np.sin(
            2 * math.pi * rng.uniform(0.5, 2) * u + rng.uniform(0, 6.3)
        )
        label[v > horizon] = ground
    shapes = []
    for _ in range(rng.integers(2, 6)):
        kind = rng.choice(["rect", "ellipse", "blob"])
        cx, cy = rng.uniform(0.1, 0.9, 2)
        ax, ay = rng.uniform(0.08, 0.3, 2)  # half sizes
        shapes.append(
            (
                ax * ay,
                kind,
                cx,
                cy,
                ax,
                ay,
                int(rng.integers(1, GENERATED_LABEL_NC)),
                rng.uniform(0, math.pi),
                rng.uniform(0, 2 * math.pi, 3),
            )
        )
    for _, kind, cx, cy, ax, ay, cls, angle, phases in sorted(shapes, key=lambda p: -p[0]):
        du, dv = u - cx, v - cy
        if kind == "rect":
            inside = (np.abs(du) <= ax) & (np.abs(dv) <= ay)
        else:
            pu = du * math.cos(angle) + dv * math.sin(angle)
            pv = dv * math.cos(angle) - du * math.sin(angle)
            r = np.hypot(pu / ax, pv / ay)
            if kind == "blob":  # an ellipse whose radius wobbles with the polar angle
                t = np.arctan2(pv / ay, pu / ax)
                r = r / (1 + 0.2 * np.sin(2 * t + phases[0]) + 0.15 * np.sin(3 * t + phases[1]))
            inside = r <= 1
        label[inside] = cls
    return label


def render_paired_sample(
    index: int, *, size: int | tuple[int, int] = 256, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Render pair ``index``: (label uint8 (H, W) in [0, GENERATED_LABEL_NC), image uint8
    (H, W, 3)). Class names are :data:`GENERATED_CLASSES`.

    Deterministic in (index, seed, size); about 1 ms at 64 px. Example::

        label, image = render_paired_sample(3, size=(64, 96))
    """
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be >= 0, got index={index}, seed={seed}")
    h, w = parse_size(size, "size")
    rng = np.random.default_rng([seed, _STREAM, index])
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    label = _label_map(rng, x, y)
    s = min(h, w) / 64  # texture periods are given for a 64-px image
    image = np.zeros((h, w, 3), np.float32)
    for cls in range(GENERATED_LABEL_NC):
        # Draw every class's jitter even when absent, so one class's look does not depend on
        # which other classes the label map holds.
        colours = _COLOURS[cls] @ _hue_rotation(rng.uniform(-0.3, 0.3)).T * rng.uniform(0.8, 1.15)
        strength = rng.uniform(0.6, 1.0)
        sub = np.random.default_rng(rng.integers(2**63))  # texture draws vary in count with size
        mask = label == cls
        if mask.any():
            t = strength * _TEXTURES[cls](sub, x, y, s)[mask][:, None]  # (n, 1)
            image[mask] = colours[0] * (1 - t) + colours[1] * t
    # Soft light from a random direction: +-gain/2 brightness across the image.
    light = rng.uniform(0, 2 * math.pi)
    ramp = (x / w - 0.5) * math.cos(light) + (y / h - 0.5) * math.sin(light)
    image *= (1 + rng.uniform(0.1, 0.35) * ramp)[..., None]
    image += rng.standard_normal((h, w, 3), dtype=np.float32) * 3  # sensor-like noise
    return label, np.clip(image, 0, 255).round().astype(np.uint8)


def write_generated_paired(
    root: str | Path,
    *,
    n_train: int = 200,
    n_test: int = 50,
    size: int | tuple[int, int] = 256,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write the generated pairs in the "folders" layout of :class:`PairedDataset`; return root.

    Layout: ``root/{train,test}_label/NNNNNN.png`` (greyscale class ids) and
    ``root/{train,test}_img/NNNNNN.png``; test pair i is render index TEST_OFFSET + i, so the test
    set does not move with n_train. Files already present are kept, so an interrupted call can be
    repeated; ``root/generated.json`` records the settings, and a call with other settings on the
    same root is an error rather than a silent mix of two datasets. Read it back with
    ``PairedDataset(root, "train", label_nc=GENERATED_LABEL_NC)``.
    """
    root = Path(root)
    h, w = parse_size(size, "size")
    _check_counts(n_train, n_test)
    settings = {
        "kind": "paired",
        "seed": seed,
        "size": [h, w],
        "render_version": PAIRED_RENDER_VERSION,
        "label_nc": GENERATED_LABEL_NC,
    }
    _claim_root(root, settings)
    jobs = [(split, i) for split, n in (("train", n_train), ("test", n_test)) for i in range(n)]
    for split, i in tqdm(jobs, desc=f"generating {root}", disable=not progress):
        name = f"{i:06d}.png"
        label_path, image_path = root / f"{split}_label" / name, root / f"{split}_img" / name
        if label_path.exists() and image_path.exists():
            continue
        index = i if split == "train" else TEST_OFFSET + i
        label, image = render_paired_sample(index, size=(h, w), seed=seed)
        for path, array in ((label_path, label), (image_path, image)):
            _write_png(path, array)
    return root
