"""Built-in generated unpaired data: plain "horses" on grass (A), striped "zebras" on savanna (B).

Both domains draw their animals from one shape generator (ellipses for body, legs, neck, head,
ears and tail, in a random pose), so a translation A -> B has to change texture and background
while keeping the shape; every image comes with its ground-truth object mask, which lets the
evaluation score that content preservation. Nothing is downloaded.

Every image is a pure function of ``(seed, domain, index)``: its random stream is seeded from
exactly that triple, so renders do not depend on order, worker or process. A and B images of the
same index are *independent* (different shapes too): the data are unpaired like the real sets,
and serial pairing must not turn them into a paired dataset by accident.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from .folders import item_generator, parse_size

Domain = Literal["A", "B"]

# Test images use indices TEST_OFFSET + i, so the test set does not move when n_train changes.
TEST_OFFSET = 1_000_000
_DOMAIN_CODE = {"A": 0, "B": 1}
# Coat colours of the "horses": browns and greys (RGB).
_COATS = np.array(
    [
        [150, 90, 50],
        [115, 65, 35],
        [80, 52, 35],
        [175, 135, 90],
        [130, 125, 120],
        [95, 92, 90],
        [185, 180, 172],
    ],
    dtype=np.float32,
)
_PART_SHADE = {"far_leg": 0.8, "tail": 0.55, "ear": 0.85}  # plain coat brightness per part
# Bump when the rendering changes, so that caches of rendered datasets are not reused.
RENDER_VERSION = 2
MIN_STRIPE_PERIOD = 4.0
_PART_PERIOD = {
    "body": 1.0,
    "neck": 0.85,
    "head": 0.6,
    "leg": 0.6,
    "far_leg": 0.6,
    "tail": 0.5,
    "ear": 0.5,
}  # zebra stripe period relative to the body's


class _Look(NamedTuple):
    """Appearance shared by all parts of one animal."""

    coat: np.ndarray  # (3,) plain coat colour (A)
    period: float  # stripe period on the body in pixels (B)
    black: float
    white: float


Fill = Callable[[np.ndarray, np.ndarray], np.ndarray]


class _Part(NamedTuple):
    """One ellipse in pixel coordinates: semi-axis ``a`` lies along ``angle`` (rad, y down)."""

    kind: str
    cx: float
    cy: float
    a: float
    b: float
    angle: float


def _animal(rng: np.random.Generator, cx: float, cy: float, scale: float) -> list[_Part]:
    """Ellipses of one animal in draw order (later ones cover earlier ones).

    Built in a local frame (body semi-length 1, facing +x, y down), then mirrored, tilted,
    scaled by ``scale`` pixels and moved to (cx, cy).
    """
    h = rng.uniform(0.42, 0.55)  # body half-height
    parts: list[tuple[str, float, float, float, float, float]] = []
    # Legs: front and back pairs; the far leg of each pair swings opposite to the near one.
    leg_len, leg_w, swing = rng.uniform(0.95, 1.25), rng.uniform(0.08, 0.11), rng.uniform(0, 0.35)
    for x_attach, sign in ((rng.uniform(0.55, 0.7), 1.0), (-rng.uniform(0.55, 0.7), -1.0)):
        for kind, dx, s in (("far_leg", 0.08, -swing), ("leg", -0.04, swing)):
            s *= sign
            ax, ay = x_attach + dx, 0.6 * h
            parts.append(
                (
                    kind,
                    ax + 0.5 * leg_len * math.sin(s),
                    ay + 0.5 * leg_len * math.cos(s),
                    0.5 * leg_len + leg_w,
                    leg_w,
                    math.pi / 2 - s,
                )
            )
    tail_angle, tail_len = rng.uniform(1.8, 2.4), rng.uniform(0.6, 0.8)
    parts.append(
        (
            "tail",
            -0.95 + 0.5 * tail_len * math.cos(tail_angle),
            -0.3 * h + 0.5 * tail_len * math.sin(tail_angle),
            0.5 * tail_len,
            rng.uniform(0.06, 0.09),
            tail_angle,
        )
    )
    parts.append(("body", 0.0, 0.0, 1.0, h, 0.0))
    # Neck up-forward (head raised) or down-forward (grazing); the head hangs from its end.
    grazing = rng.random() < 0.25
    neck_angle = rng.uniform(0.5, 0.9) if grazing else -rng.uniform(0.7, 1.2)
    neck_len, neck_w = rng.uniform(0.55, 0.75), rng.uniform(0.16, 0.22)
    bx, by = 0.75, -0.35 * h
    ex, ey = bx + neck_len * math.cos(neck_angle), by + neck_len * math.sin(neck_angle)
    parts.append(
        ("neck", (bx + ex) / 2, (by + ey) / 2, 0.5 * neck_len + neck_w, neck_w, neck_angle)
    )
    head_angle = rng.uniform(1.2, 1.5) if grazing else rng.uniform(0.5, 1.2)
    head_a, head_b = rng.uniform(0.28, 0.35), rng.uniform(0.12, 0.15)
    parts.append(
        (
            "head",
            ex + 0.7 * head_a * math.cos(head_angle),
            ey + 0.7 * head_a * math.sin(head_angle),
            head_a,
            head_b,
            head_angle,
        )
    )
    parts.append(("ear", ex - 0.04, ey - 0.12, 0.09, 0.035, -1.35))

    mirror = -1.0 if rng.random() < 0.5 else 1.0
    tilt = rng.uniform(-0.2, 0.2)
    c, s = math.cos(tilt), math.sin(tilt)
    out = []
    for kind, x, y, a, b, angle in parts:
        x, angle = mirror * x, (angle if mirror > 0 else math.pi - angle)
        # Semi-axes of at least a pixel: the body then covers the pixel at its centre, so even
        # tiny images get a non-empty mask.
        out.append(
            _Part(
                kind,
                cx + scale * (c * x - s * y),
                cy + scale * (s * x + c * y),
                max(scale * a, 1.0),
                max(scale * b, 1.0),
                angle + tilt,
            )
        )
    return out


def _upsample(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear upsampling of a coarse (gh, gw) grid to (h, w) with two interpolation matrices."""

    def weights(n_in: int, n_out: int) -> np.ndarray:
        t = np.linspace(0, n_in - 1, n_out)
        i0 = np.minimum(t.astype(int), n_in - 2)
        m = np.zeros((n_out, n_in), np.float32)
        m[np.arange(n_out), i0] = 1 - (t - i0)
        m[np.arange(n_out), i0 + 1] = t - i0
        return m

    return weights(grid.shape[0], h) @ grid @ weights(grid.shape[1], w).T


def _background(rng: np.random.Generator, domain: Domain, h: int, w: int) -> np.ndarray:
    """Green grass (A) or tan savanna (B): base colour, blotches, a depth gradient, fine streaks."""
    if domain == "A":
        base = rng.uniform([60, 110, 35], [100, 150, 65])
        streaks = np.repeat(rng.standard_normal((-(-h // 3), w), np.float32), 3, 0)[:h]  # blades
    else:
        base = rng.uniform([190, 160, 95], [220, 190, 130])
        streaks = np.repeat(rng.standard_normal((h, -(-w // 4)), np.float32), 4, 1)[:, :w]
    blotches = _upsample(rng.standard_normal((6, 6), np.float32), h, w)  # (H, W) luminance
    depth = np.linspace(12, -12, h, dtype=np.float32)[:, None]  # lighter far away (top)
    lum = 16 * blotches + depth + 9 * streaks
    tint = np.stack([_upsample(g, h, w) for g in rng.standard_normal((3, 4, 4), np.float32)], -1)
    return base.astype(np.float32) + lum[..., None] + 6 * tint


def _paint(image: np.ndarray, mask: np.ndarray, part: _Part, fill: Fill) -> None:
    """Fill one ellipse in place; ``fill(u, v)`` maps part coordinates to (n, 3) colours.

    u runs along the ellipse's long axis, v across it, both in pixels from its centre.
    """
    h, w = mask.shape
    ca, sa = math.cos(part.angle), math.sin(part.angle)
    ex = math.hypot(part.a * ca, part.b * sa)  # half extent of the rotated ellipse
    ey = math.hypot(part.a * sa, part.b * ca)
    x0, x1 = max(int(part.cx - ex), 0), min(int(part.cx + ex) + 2, w)
    y0, y1 = max(int(part.cy - ey), 0), min(int(part.cy + ey) + 2, h)
    if x0 >= x1 or y0 >= y1:
        return
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - part.cx  # pixel centres
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - part.cy
    u, v = dx * ca + dy * sa, dy * ca - dx * sa  # (h', w') each
    inside = (u / part.a) ** 2 + (v / part.b) ** 2 <= 1
    # Rounded look: darken towards the long edges of every ellipse.
    shade = 1 - 0.3 * (v[inside] / part.b) ** 2
    image[y0:y1, x0:x1][inside] = fill(u[inside], v[inside]) * shade[:, None]
    mask[y0:y1, x0:x1] |= inside


def _coat(rng: np.random.Generator, domain: Domain, part: _Part, look: _Look) -> Fill:
    """Colour function for one part: plain coat (A) or stripes repeating along its long axis (B)."""
    if domain == "A":
        colour = look.coat * _PART_SHADE.get(part.kind, 1.0)
        return lambda u, v: np.broadcast_to(colour, (u.size, 3))
    # Stripes run across each part's long axis (vertical on the body, rings on legs and neck),
    # turned by a small random angle and bent by a wave across the part.
    # At least 4 px (2-px stripes): finer stripes alias at low resolution and no small
    # generator can learn them, which would make the 64 px demo pointless.
    period = max(look.period * _PART_PERIOD[part.kind], MIN_STRIPE_PERIOD)
    turn, bend = rng.uniform(-0.3, 0.3), rng.uniform(0.5, 2.0)
    wave, phase = rng.uniform(0.5, 1.0) * math.pi / part.b, rng.uniform(0, 2 * math.pi)
    cut = rng.uniform(-0.25, 0.25)  # shifts the black/white balance

    def fill(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        t = 2 * math.pi * (u * math.cos(turn) + v * math.sin(turn)) / period
        light = np.sin(t + bend * np.sin(wave * v + phase)) > cut
        return np.where(light[:, None], look.white, look.black)

    return fill


def render_sample(
    domain: Domain, index: int, *, size: int | tuple[int, int] = (256, 256), seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Render image ``index`` of ``domain``: (uint8 (H, W, 3) image, bool (H, W) object mask).

    The result depends only on (domain, index, size, seed). Example::

        image, mask = render_sample("B", 3, size=(128, 192))
    """
    if domain not in _DOMAIN_CODE:
        raise ValueError(f"domain must be 'A' or 'B', got {domain!r}")
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be >= 0, got index={index}, seed={seed}")
    h, w = parse_size(size, "size")
    rng = np.random.default_rng([seed, _DOMAIN_CODE[domain], index])
    image = _background(rng, domain, h, w)  # float32 (H, W, 3), 0-255 scale
    mask = np.zeros((h, w), dtype=bool)
    s = min(h, w)
    n_animals = 2 if rng.random() < 0.3 else 1
    # Two animals take the left and right halves, so they overlap only a little.
    slots = [(0.25, 0.75)] if n_animals == 1 else [(0.2, 0.45), (0.55, 0.8)]
    animals = [(rng.uniform(*slot) * w, rng.uniform(0.4, 0.6) * h) for slot in slots]
    for cx, cy in sorted(animals, key=lambda p: p[1]):  # the lower animal is nearer: drawn last
        scale = s * rng.uniform(0.16, 0.24) / n_animals**0.3
        look = _Look(
            coat=_COATS[rng.integers(len(_COATS))] + rng.uniform(-12, 12, 3),
            period=scale * rng.uniform(0.12, 0.2),
            black=rng.uniform(15, 45),
            white=rng.uniform(215, 245),
        )
        for part in _animal(rng, cx, cy, scale):
            _paint(image, mask, part, _coat(rng, domain, part, look))
    image += rng.standard_normal((h, w, 3), np.float32) * 4  # sensor-like noise
    return np.clip(image, 0, 255).round().astype(np.uint8), mask


def _check_counts(n_train: int, n_test: int) -> None:
    if not 0 < n_train <= TEST_OFFSET or n_test <= 0:
        raise ValueError(
            f"need 0 < n_train <= {TEST_OFFSET} and n_test > 0, "
            f"got n_train={n_train}, n_test={n_test}"
        )


def _split_index(split: str, i: int) -> int:
    return i if split == "train" else TEST_OFFSET + i


class GeneratedUnpaired(Dataset):
    """Generated horse -> zebra-like unpaired data, rendered on the fly (no augmentation).

    Items are dicts: ``A``/``B`` float (3, H, W) in [-1, 1], ``A_mask``/``B_mask`` bool
    (1, H, W), ``A_path``/``B_path`` the names ``write_generated_dataset`` gives the same images.
    Item i uses A image i and B image i (``serial``) or a B image drawn from (seed, epoch, i);
    ``serial=None`` means random pairing for "train" and serial for "test", as upstream.
    ``direction="BtoA"`` swaps the domains (A = zebras).
    """

    def __init__(
        self,
        split: Literal["train", "test"] = "train",
        *,
        n_train: int = 200,
        n_test: int = 50,
        size: int | tuple[int, int] = (256, 256),
        seed: int = 0,
        direction: Literal["AtoB", "BtoA"] = "AtoB",
        serial: bool | None = None,
    ):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        _check_counts(n_train, n_test)
        if direction not in ("AtoB", "BtoA"):
            raise ValueError(f"direction must be 'AtoB' or 'BtoA', got {direction!r}")
        self.split, self.size, self.seed = split, parse_size(size, "size"), seed
        self.n = n_train if split == "train" else n_test
        self.domains: tuple[Domain, Domain] = ("A", "B") if direction == "AtoB" else ("B", "A")
        self.serial = split != "train" if serial is None else serial
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the random B pairing of ``epoch`` (call it before each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} items")
        g = item_generator(self.seed, self.epoch, index)
        b_index = index if self.serial else int(torch.randint(self.n, (1,), generator=g))
        item: dict[str, torch.Tensor | str] = {}
        for key, domain, i in (("A", self.domains[0], index), ("B", self.domains[1], b_index)):
            image, mask = render_sample(
                domain, _split_index(self.split, i), size=self.size, seed=self.seed
            )
            # uint8 (H, W, 3) -> float (3, H, W) in [-1, 1], as ToTensor + Normalize(0.5, 0.5)
            item[key] = torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1
            item[f"{key}_mask"] = torch.from_numpy(mask)[None]
            item[f"{key}_path"] = f"generated/{self.split}{domain}/{i:06d}.png"
        return item


def _claim_root(
    root: Path, settings: dict, manifest: str = "generated.json", what: str = "generated dataset"
) -> None:
    """Create ``root`` and record ``settings`` in ``root/manifest``; a root already holding data
    made with other settings is an error rather than a silent mix of two datasets."""
    path = root / manifest
    if path.exists() and json.loads(path.read_text()) != settings:
        raise ValueError(
            f"{root} holds a {what} made with {path.read_text()}, not {settings}; use another root"
        )
    root.mkdir(parents=True, exist_ok=True)
    tmp = _private_tmp(path)
    tmp.write_text(json.dumps(settings))
    os.replace(tmp, path)  # a process starting beside us never reads half a manifest


def _write_png(path: Path, array: np.ndarray) -> None:
    """Write then rename, so an interruption never leaves a truncated file to be skipped."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _private_tmp(path)
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)


def _private_tmp(path: Path) -> Path:
    """A temporary name of this process's own: two runs that generate the same cache at once
    (parallel sweeps) write identical files, but a shared name let one rename the other's
    half-written file away (FileNotFoundError) or publish it truncated."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_generated_dataset(
    root: str | Path,
    *,
    n_train: int = 200,
    n_test: int = 50,
    size: int | tuple[int, int] = (256, 256),
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write the generated set in the CycleGAN layout and return ``root``.

    Layout: ``root/{trainA,trainB,testA,testB}/NNNNNN.png`` with masks (0/255 greyscale PNGs of the
    same names) in ``root/<folder>_masks/``. Files already present are kept, so an interrupted
    call can simply be repeated; ``root/generated.json`` records seed and size, and a call with
    other settings on the same root is an error rather than a silent mix of two datasets.
    """
    root = Path(root)
    h, w = parse_size(size, "size")
    _check_counts(n_train, n_test)
    settings = {"seed": seed, "size": [h, w], "render_version": RENDER_VERSION}
    _claim_root(root, settings)
    jobs = [
        (split, domain, i)
        for split, n in (("train", n_train), ("test", n_test))
        for domain in ("A", "B")
        for i in range(n)
    ]
    for split, domain, i in tqdm(jobs, desc=f"generating {root}", disable=not progress):
        name = f"{i:06d}.png"
        image_path = root / f"{split}{domain}" / name
        mask_path = root / f"{split}{domain}_masks" / name
        if image_path.exists() and mask_path.exists():
            continue
        image, mask = render_sample(domain, _split_index(split, i), size=(h, w), seed=seed)
        for path, array in ((image_path, image), (mask_path, mask.astype(np.uint8) * 255)):
            _write_png(path, array)
    return root
