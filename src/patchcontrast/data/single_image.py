"""SinCUT data: crops of one image per domain (upstream ``singleimage`` dataset;
docs/design.md §4.4).

Each domain image is loaded once (and, when its longer side exceeds ``load_size``, scaled down
so that the longer side equals ``load_size``, bilinear, aspect ratio kept). Upstream's
``zoom_and_patch`` ignores ``load_size`` and uses the image at its native size; the two agree
for images of at most ``load_size`` pixels per side (pass ``load_size=None`` to never scale).

Per minibatch of ``batch_size`` consecutive indices and per domain, independently for A and B:

1. one anisotropic zoom, each axis factor uniform in ``[1/random_scale_max, 1]``; the zoomed
   side is ``max(crop, round(side * factor))`` (bilinear);
2. the zoomed image is cut into a grid of non-overlapping ``crop x crop`` cells placed at one
   random offset in the left-over margin; the batch visits the cells in a shuffled order, so its
   crops come from distinct, non-overlapping places (cells repeat only when the batch is larger
   than the grid);
3. each crop is flipped horizontally with probability 1/2, independently.

Upstream draws the cell from a permutation of all 100 000 indices taken modulo the grid size and
a fresh offset per crop, so crops of one batch may coincide or overlap; here they cannot (the
contrastive loss uses the other crops of the batch as negatives). Every choice of batch k is
drawn from ``item_generator(seed, epoch, k)``, so an item depends only on (seed, epoch, index)
and the batch size. A loader must therefore read the indices in order (``shuffle=False``, the
same ``batch_size``): the randomness is inside the items.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .folders import item_generator, list_images, load_image, parse_size
from .generated import RENDER_VERSION, _claim_root, _private_tmp, _write_png, render_sample

_DOMAINS = ("A", "B")


@dataclass(frozen=True)
class ZoomCrop:
    """The random choices behind one item of one domain (for inspection and tests).

    ``zoom``: the batch's (y, x) factors; ``size``: (H, W) of the zoomed image; ``grid``:
    (rows, cols) of crop cells; ``cell``: (row, col) of this crop; ``top``/``left``: its corner
    in the zoomed image; ``flip``: horizontal flip.
    """

    zoom: tuple[float, float]
    size: tuple[int, int]
    grid: tuple[int, int]
    cell: tuple[int, int]
    top: int
    left: int
    flip: bool


def _resolve_image(path: str | Path, name: str) -> Path:
    """``path`` itself, or the one image inside it when it is a folder (upstream's layout)."""
    path = Path(path)
    if path.is_dir():
        images = list_images(path)
        if len(images) != 1:
            raise ValueError(
                f"{name}: folder {path} must hold exactly one image for single-image "
                f"training, found {len(images)}"
            )
        path = images[0]
    if not path.is_file():
        raise ValueError(f"{name}: image file {path} does not exist")
    try:
        with Image.open(path) as img:
            img.verify()
    # PIL signals damaged files with many exception types; any of them means "unreadable"
    except Exception as err:
        raise ValueError(
            f"{name}: cannot read image {path} ({type(err).__name__}: {err})"
        ) from None
    return path


class SingleImageDataset(Dataset):
    """SinCUT training crops of one image per domain (docs/design.md §4.4; see the module
    docstring).

    Items: ``{"A", "B": float (3, crop_size, crop_size) in [-1, 1], "A_path", "B_path"}``;
    ``len`` is ``virtual_size`` (100 000 upstream, i.e. 6 250 batches of 16 per epoch).
    ``image_a``/``image_b`` are image files or folders holding exactly one image.
    ``load_size=None`` keeps the images at their native size, as upstream.
    """

    # read in index order: the random zoom and cells are shared by runs of batch_size indices
    ordered = True

    def __init__(
        self,
        image_a: str | Path,
        image_b: str | Path,
        *,
        crop_size: int = 64,
        load_size: int | None = 1024,
        random_scale_max: float = 3.0,
        batch_size: int = 16,
        virtual_size: int = 100_000,
        seed: int = 0,
        flip: bool = True,
    ) -> None:
        if not (isinstance(crop_size, int) and crop_size > 0 and crop_size % 4 == 0):
            raise ValueError(
                f"crop_size must be a positive multiple of 4 (the generator's "
                f"down/up-sampling), got {crop_size!r}"
            )
        if load_size is not None and not (isinstance(load_size, int) and load_size >= crop_size):
            raise ValueError(
                f"load_size must be None or an int >= crop_size={crop_size}, got {load_size!r}"
            )
        if not random_scale_max >= 1:
            raise ValueError(
                f"random_scale_max must be >= 1 (zoom factors lie in "
                f"[1/random_scale_max, 1]), got {random_scale_max!r}"
            )
        if batch_size < 1 or virtual_size < 1:
            raise ValueError(
                f"batch_size and virtual_size must be >= 1, got "
                f"batch_size={batch_size}, virtual_size={virtual_size}"
            )
        self.crop_size, self.load_size = crop_size, load_size
        self.random_scale_max, self.batch_size = float(random_scale_max), batch_size
        self.virtual_size, self.seed, self.flip, self.epoch = virtual_size, seed, flip, 0
        self.paths: dict[str, Path] = {}
        self.images: dict[str, Image.Image] = {}
        for domain, given in zip(_DOMAINS, (image_a, image_b)):
            path = _resolve_image(given, f"image_{domain.lower()}")
            self.paths[domain], self.images[domain] = path, self._load(path)
        # One zoomed image per domain is kept: consecutive items of a batch share it.
        self._zoomed: dict[str, tuple[tuple[int, int], np.ndarray]] = {}

    def _load(self, path: Path) -> Image.Image:
        image = load_image(path, 3)
        w, h = image.size
        if self.load_size is not None and max(w, h) > self.load_size:
            scale = self.load_size / max(w, h)
            image = image.resize(
                (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR
            )
        w2, h2 = image.size
        if min(w2, h2) < self.crop_size:
            scaled = f" (scaled from {h}x{w} to load_size={self.load_size})"
            scaled = "" if (w2, h2) == (w, h) else scaled
            raise ValueError(
                f"{path} is {h2}x{w2}{scaled}, smaller than crop_size="
                f"{self.crop_size}; use a smaller crop_size or a larger load_size"
            )
        return image

    def set_epoch(self, epoch: int) -> None:
        """Select the zooms, cells and flips of ``epoch`` (call it before each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.virtual_size

    def crop_params(self, index: int) -> dict[str, ZoomCrop]:
        """The choices of item ``index`` for domains "A" and "B" (what ``__getitem__`` uses)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        batch, slot = divmod(index, self.batch_size)
        g = item_generator(self.seed, self.epoch, batch)
        crop = self.crop_size
        params = {}
        for domain in _DOMAINS:
            # the draws below are made in full for every item, so slot j always sees the same
            # stream as its batch mates
            low = 1 / self.random_scale_max
            zoom_y, zoom_x = (low + (1 - low) * torch.rand(2, generator=g)).tolist()
            w, h = self.images[domain].size
            size = (max(crop, round(h * zoom_y)), max(crop, round(w * zoom_x)))
            rows, cols = size[0] // crop, size[1] // crop
            off_y = int(torch.randint(size[0] - rows * crop + 1, (1,), generator=g))
            off_x = int(torch.randint(size[1] - cols * crop + 1, (1,), generator=g))
            order = torch.randperm(rows * cols, generator=g)
            flips = torch.rand(self.batch_size, generator=g) < 0.5
            row, col = divmod(int(order[slot % (rows * cols)]), cols)
            params[domain] = ZoomCrop(
                zoom=(zoom_y, zoom_x),
                size=size,
                grid=(rows, cols),
                cell=(row, col),
                top=off_y + row * crop,
                left=off_x + col * crop,
                flip=self.flip and bool(flips[slot]),
            )
        return params

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        item: dict[str, torch.Tensor | str] = {}
        for domain, p in self.crop_params(index).items():
            zoomed = self._zoom(domain, p.size)  # uint8 (H', W', 3)
            patch = zoomed[p.top : p.top + self.crop_size, p.left : p.left + self.crop_size]
            x = torch.from_numpy(np.array(patch)).permute(2, 0, 1)  # copy: PIL's array is read-only
            x = x.flip(-1) if p.flip else x
            # uint8 -> [-1, 1], as ToTensor + Normalize(0.5, 0.5)
            item[domain] = x.float() / 127.5 - 1
            item[f"{domain}_path"] = str(self.paths[domain])
        return item

    def _zoom(self, domain: str, size: tuple[int, int]) -> np.ndarray:
        cached = self._zoomed.get(domain)
        if cached is None or cached[0] != size:
            image = self.images[domain].resize((size[1], size[0]), Image.Resampling.BILINEAR)
            cached = (size, np.asarray(image))
            self._zoomed[domain] = cached
        return cached[1]


def write_generated_single_pair(
    root: str | Path, *, size: int | tuple[int, int] = (192, 256), seed: int = 0
) -> Path:
    """Write a built-in single-image pair for tests and demos; return ``root``.

    ``root/trainA/a.png``: plain animals on grass, ``root/trainB/b.png``: striped animals on
    savanna (``render_sample`` image 0 of each domain at ``size`` (H, W)), and ``root/testA/a.png``
    a copy of the A image (SinCUT translates its training image at test). Files already present
    are kept, so an interrupted call can be repeated; files are written then renamed, so none
    is ever left truncated. ``root/generated_single.json`` records seed and size, and a call
    with other settings on the same root is an error rather than a silent mix.
    """
    root = Path(root)
    h, w = parse_size(size, "size")
    settings = {"seed": seed, "size": [h, w], "render_version": RENDER_VERSION}
    _claim_root(root, settings, "generated_single.json", "generated single-image pair")
    for domain, name in (("A", "a.png"), ("B", "b.png")):
        path = root / f"train{domain}" / name
        if path.exists():
            continue
        _write_png(path, render_sample(domain, 0, size=(h, w), seed=seed)[0])
    test = root / "testA" / "a.png"
    if not test.exists():
        test.parent.mkdir(parents=True, exist_ok=True)
        tmp = _private_tmp(test)
        shutil.copyfile(root / "trainA" / "a.png", tmp)
        os.replace(tmp, test)
    return root
