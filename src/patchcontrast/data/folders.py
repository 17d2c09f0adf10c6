"""Image folders in the CycleGAN / CUT layout (docs/design.md §5.3).

``root/trainA``, ``root/trainB``, ``root/testA``, ``root/testB`` hold the two domains; an optional
``<folder>_masks`` sibling holds object masks of the same file names (the generated dataset writes
them). Unlike upstream, every file is checked once up front, any image mode is accepted, and all
randomness (B pairing, crops, flips) comes from a generator seeded by (seed, epoch, index).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms.functional import pil_to_tensor

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
OnBad = Literal["error", "skip"]
Size = int | tuple[int, int]


def list_images(folder: str | Path) -> list[Path]:
    """Sorted image files directly inside ``folder`` (extension case ignored, hidden files skipped).

    Hidden files are skipped because archives made on macOS carry ``._name.jpg`` resource forks.
    """
    folder = Path(folder)
    accepted = ", ".join(IMAGE_EXTENSIONS)
    if not folder.is_dir():
        raise ValueError(f"image folder {folder} does not exist (expected {accepted} files in it)")
    paths = sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )
    if not paths:
        raise ValueError(f"no images in {folder}; accepted extensions: {accepted}")
    return paths


def check_images(paths: Sequence[Path], on_bad: OnBad = "error") -> list[Path]:
    """Open and verify every file once; return the readable ones.

    ``on_bad="error"`` raises one ValueError listing every unreadable file; ``"skip"`` drops them
    with a single warning that counts them.
    """
    if on_bad not in ("error", "skip"):
        raise ValueError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
    good, bad = [], []
    for path in paths:
        try:
            with Image.open(path) as img:
                img.verify()
        # PIL reports damaged files with many exception types (OSError, SyntaxError, struct.error,
        # ...); any of them means "unreadable" here.
        except Exception as err:
            bad.append(f"  {path}: {type(err).__name__}: {err}")
        else:
            good.append(Path(path))
    if bad and on_bad == "error":
        raise ValueError(
            f"{len(bad)} unreadable image file(s):\n"
            + "\n".join(bad)
            + "\nremove or replace them, or pass on_bad='skip' to leave them out"
        )
    if bad:
        warnings.warn(f"skipping {len(bad)} unreadable image file(s), e.g.\n{bad[0]}", stacklevel=2)
    return good


class UnreadableImageError(ValueError):
    """A file that is no readable image (damaged, empty, of another kind); ``problem`` is the
    decoder's reason."""

    def __init__(self, path: str | Path, problem: str):
        super().__init__(
            f"{path} is not a readable image ({problem}); expected an image file (PNG, JPEG, ...)"
        )
        self.path, self.problem = path, problem


def open_image(path: str | Path) -> Image.Image:
    """``Image.open`` with the pixels loaded. A file that is no readable image raises
    :class:`UnreadableImageError` (a one-line ValueError naming it); errors of the file system
    (missing file, no permission) stay OSErrors."""
    image = None
    try:
        image = Image.open(path)
        image.load()
    # PIL reports damaged files with many exception types (OSError, SyntaxError, struct.error,
    # ...); an OSError with an errno comes from the file system instead
    except Exception as err:
        if image is not None:
            image.close()
        if isinstance(err, OSError) and err.errno is not None:
            raise
        problem = (
            "of no image format known to PIL"
            if isinstance(err, UnidentifiedImageError)
            else (str(err) or type(err).__name__).splitlines()[0]
        )
        raise UnreadableImageError(path, problem) from None
    return image


def load_image(path: str | Path, channels: Literal[1, 3] = 3) -> Image.Image:
    """Load any image as RGB (``channels=3``) or greyscale "L" (``channels=1``).

    Transparent images (RGBA, LA, palette with transparency) are composited on white; 16-bit
    greyscale is rescaled to 8 bits (PIL's own conversion would clip everything above 255).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    with open_image(path) as img:
        if img.mode == "F":
            raise ValueError(f"{path}: floating-point images are not supported")
        if img.mode == "I" or img.mode.startswith("I;16"):
            # 16-bit PNG/TIFF greyscale (PIL opens some as 32-bit "I"): 0-65535 -> 0-255
            grey = np.asarray(img, dtype=np.float64) / 257
            rgb = Image.fromarray(np.clip(grey, 0, 255).round().astype(np.uint8)).convert("RGB")
        elif img.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info:
            white = Image.new("RGBA", img.size, (255, 255, 255, 255))
            rgb = Image.alpha_composite(white, img.convert("RGBA")).convert("RGB")
        else:
            rgb = img.convert("RGB")
    return rgb if channels == 3 else rgb.convert("L")


def parse_size(size: Size, name: str) -> tuple[int, int]:
    """``size`` as (H, W); an int means a square."""
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
        raise ValueError(f"{name} must be a positive int or (H, W) of positive ints, got {size!r}")
    return h, w


@dataclass(frozen=True)
class CropParams:
    """Random choices of one transform call: crop corner and horizontal flip."""

    top: int = 0
    left: int = 0
    flip: bool = False


@dataclass(frozen=True)
class ResizeAndCrop:
    """Upstream ``resize_and_crop``; build it with :func:`build_transform`.

    Training: bicubic resize to ``load_size`` (aspect ratio not kept), random ``crop_size`` crop,
    random horizontal flip. Test: bicubic resize straight to ``crop_size``. Images become float
    (C, H, W) tensors in [-1, 1]; masks get the same geometry (nearest resize) as bool (1, H, W).
    """

    load_size: tuple[int, int]  # (H, W)
    crop_size: tuple[int, int]
    train: bool
    flip: bool

    def sample(self, generator: torch.Generator | None = None) -> CropParams:
        """Draw crop corner and flip (test: no randomness, nothing drawn)."""
        if not self.train:
            return CropParams()
        (lh, lw), (ch, cw) = self.load_size, self.crop_size
        top = int(torch.randint(lh - ch + 1, (1,), generator=generator))
        left = int(torch.randint(lw - cw + 1, (1,), generator=generator))
        flip = self.flip and bool(torch.rand((), generator=generator) < 0.5)
        return CropParams(top, left, flip)

    def __call__(
        self, image: Image.Image, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return self.apply(image, self.sample(generator))

    def apply(self, image: Image.Image, params: CropParams) -> torch.Tensor:
        """PIL image -> float (C, H, W) in [-1, 1] with the given crop and flip."""
        x = self._geometry(image, params, Image.Resampling.BICUBIC)
        return x.float() / 127.5 - 1  # = ToTensor then Normalize(mean=0.5, std=0.5)

    def apply_mask(self, mask: Image.Image, params: CropParams) -> torch.Tensor:
        """Mask image (nonzero = object) -> bool (1, H, W) aligned with ``apply``'s output."""
        return self._geometry(mask.convert("L"), params, Image.Resampling.NEAREST) > 127

    def apply_label(self, label: Image.Image, params: CropParams) -> torch.Tensor:
        """Single-channel class-id map (mode L, P, I or I;16) -> int64 (1, H, W) aligned with
        ``apply``'s output; nearest resampling, so only ids present in ``label`` come out."""
        ids = np.asarray(label)  # P gives palette indices, I;16 gives uint16: the ids themselves
        if ids.ndim != 2:
            raise ValueError(
                f"label must be a single-channel image of class ids (mode L, P, I or "
                f"I;16), got mode {label.mode}"
            )
        # As 32-bit "I": one mode that PIL resizes for any id range.
        as_int = Image.fromarray(ids.astype(np.int32))
        return self._geometry(as_int, params, Image.Resampling.NEAREST).long()

    def _geometry(self, image: Image.Image, params: CropParams, resample: int) -> torch.Tensor:
        h, w = self.load_size if self.train else self.crop_size
        x = pil_to_tensor(image.resize((w, h), resample))  # uint8 (C, h, w)
        if self.train:
            ch, cw = self.crop_size
            x = x[:, params.top : params.top + ch, params.left : params.left + cw]
        return x.flip(-1) if params.flip else x


def build_transform(load_size: Size, crop_size: Size, *, train: bool, flip: bool) -> ResizeAndCrop:
    """Validated :class:`ResizeAndCrop`; sizes are ints (square) or (H, W).

    ``crop_size`` sides must be multiples of 4 so the generator's two stride-2 stages give back
    an image of the input size; at training ``load_size`` must be at least ``crop_size``.
    """
    load, crop = parse_size(load_size, "load_size"), parse_size(crop_size, "crop_size")
    if crop[0] % 4 or crop[1] % 4:
        raise ValueError(
            f"crop_size {crop} must have sides that are multiples of 4, e.g. "
            f"{(crop[0] // 4 * 4 or 4, crop[1] // 4 * 4 or 4)}"
        )
    if train and (load[0] < crop[0] or load[1] < crop[1]):
        raise ValueError(f"load_size {load} is smaller than crop_size {crop}")
    return ResizeAndCrop(load, crop, train, flip)


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """Generator for one item's random choices: a function of (seed, epoch, index) only, so
    results do not depend on worker, process or the order in which items are loaded."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _find_masks(folder: Path, images: list[Path]) -> list[Path] | None:
    """Masks of ``images`` in ``<folder>_masks`` (same name, or same stem with .png), if any."""
    mask_dir = folder.with_name(folder.name + "_masks")
    if not mask_dir.is_dir():
        return None
    masks, missing = [], []
    for image in images:
        candidates = [mask_dir / image.name, mask_dir / (image.stem + ".png")]
        found = [p for p in candidates if p.is_file()]
        if found:
            masks.append(found[0])
        else:
            missing.append(image.name)
    if missing:
        raise ValueError(
            f"{mask_dir} lacks masks for {len(missing)} image(s): "
            + ", ".join(missing[:10])
            + (" ..." if len(missing) > 10 else "")
        )
    return check_images(masks, "error")


class _MaskedFolders(Dataset):
    """Shared loading of one image (+ optional mask) under a transform."""

    transform: ResizeAndCrop
    channels: Literal[1, 3]

    def _load(
        self, item: dict, key: str, path: Path, mask: Path | None, generator: torch.Generator | None
    ) -> None:
        params = self.transform.sample(generator)
        item[key] = self.transform.apply(load_image(path, self.channels), params)
        item[f"{key}_path"] = str(path)
        if mask is not None:
            with Image.open(mask) as m:
                item[f"{key}_mask"] = self.transform.apply_mask(m, params)


class UnalignedDataset(_MaskedFolders):
    """Unpaired folders ``root/<phase>A`` and ``root/<phase>B`` (swapped by ``direction="BtoA"``).

    Length max(|A|, |B|). Item i: A image i mod |A|; B image i mod |B| (serial) or drawn at random
    from (seed, epoch, i) — ``serial=None`` means random for "train" and serial otherwise, as
    upstream. Crops and flips (train only) come from the same per-item generator, independently
    for A and B. ``phase="test"`` falls back to valA/valB when testA is missing. Items hold
    ``A``, ``B`` (float (C, H, W) in [-1, 1]), ``A_path``, ``B_path`` and, when a ``_masks``
    folder exists, ``A_mask``/``B_mask`` (bool (1, H, W)). ``on_bad="skip"`` leaves out
    unreadable images (masks must always be readable).
    """

    def __init__(
        self,
        root: str | Path,
        phase: str = "train",
        *,
        direction: Literal["AtoB", "BtoA"] = "AtoB",
        load_size: Size = 286,
        crop_size: Size = 256,
        flip: bool = True,
        serial: bool | None = None,
        channels: Literal[1, 3] = 3,
        on_bad: OnBad = "error",
        seed: int = 0,
    ):
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"dataset root {root} does not exist")
        if direction not in ("AtoB", "BtoA"):
            raise ValueError(f"direction must be 'AtoB' or 'BtoA', got {direction!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        folder = phase
        if phase == "test" and not (root / "testA").is_dir() and (root / "valA").is_dir():
            folder = "val"
        src, dst = ("A", "B") if direction == "AtoB" else ("B", "A")
        self.folder_a, self.folder_b = root / f"{folder}{src}", root / f"{folder}{dst}"
        a, b = list_images(self.folder_a), list_images(self.folder_b)
        readable = set(check_images(a + b, on_bad))  # one pass, so at most one warning
        self.a_paths = [p for p in a if p in readable]
        self.b_paths = [p for p in b if p in readable]
        for name, paths in ((self.folder_a, self.a_paths), (self.folder_b, self.b_paths)):
            if not paths:
                raise ValueError(f"no readable images left in {name}")
        self.a_masks = _find_masks(self.folder_a, self.a_paths)
        self.b_masks = _find_masks(self.folder_b, self.b_paths)
        self.transform = build_transform(load_size, crop_size, train=phase == "train", flip=flip)
        self.serial = phase != "train" if serial is None else serial
        self.channels, self.seed, self.epoch = channels, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the random pairing, crops and flips of ``epoch``.

        Call it before each epoch; DataLoader workers see it when they are re-created per epoch
        (the default, ``persistent_workers=False``).
        """
        self.epoch = epoch

    def __len__(self) -> int:
        return max(len(self.a_paths), len(self.b_paths))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        g = item_generator(self.seed, self.epoch, index)
        ia = index % len(self.a_paths)
        if self.serial:
            ib = index % len(self.b_paths)
        else:
            ib = int(torch.randint(len(self.b_paths), (1,), generator=g))
        item: dict[str, torch.Tensor | str] = {}
        self._load(item, "A", self.a_paths[ia], self.a_masks and self.a_masks[ia], g)
        self._load(item, "B", self.b_paths[ib], self.b_masks and self.b_masks[ib], g)
        return item


class SingleFolderDataset(_MaskedFolders):
    """One folder of images to translate, with the test transform (resize to ``crop_size``).

    Items hold ``A`` (float (C, H, W) in [-1, 1]) and ``A_path``, plus ``A_mask`` when a
    ``<folder>_masks`` folder exists.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        crop_size: Size = 256,
        channels: Literal[1, 3] = 3,
        on_bad: OnBad = "error",
    ):
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        folder = Path(folder)
        self.paths = check_images(list_images(folder), on_bad)
        if not self.paths:
            raise ValueError(f"no readable images left in {folder}")
        self.masks = _find_masks(folder, self.paths)
        self.transform = build_transform(crop_size, crop_size, train=False, flip=False)
        self.channels = channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        item: dict[str, torch.Tensor | str] = {}
        self._load(item, "A", self.paths[index], self.masks and self.masks[index], None)
        return item
