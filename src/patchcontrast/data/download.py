"""Download the standard CycleGAN / CUT / pix2pix datasets: resumable, verified, extracted.

Sources (docs/design.md §5.5): unpaired sets from the CycleGAN dataset folder (zip archives), paired
pix2pix sets from the pix2pix dataset folder (tar.gz archives). Downloads go to
``<root>/<name>.<ext>.part`` and resume with an HTTP ``Range`` request after an interruption;
the archive is checked for integrity before anything is extracted, and extraction refuses paths
that would escape ``root``.
"""

from __future__ import annotations

import http.client
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

CYCLEGAN_URL = "https://efrosgans.eecs.berkeley.edu/cyclegan/datasets/{name}.zip"
PIX2PIX_URL = "http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/{name}.tar.gz"

UNPAIRED = (
    "horse2zebra",
    "summer2winter_yosemite",
    "apple2orange",
    "monet2photo",
    "cezanne2photo",
    "ukiyoe2photo",
    "vangogh2photo",
    "maps",
    "facades",
    "iphone2dslr_flower",
    "grumpifycat",
    "mini",
)
PAIRED = ("facades", "maps", "night2day", "edges2handbags", "edges2shoes")

# name -> URL; "<name>_pix2pix" for the side-by-side paired archives of a name in both lists.
DATASETS: dict[str, str] = {
    **{name: CYCLEGAN_URL.format(name=name) for name in UNPAIRED},
    **{
        (f"{name}_pix2pix" if name in UNPAIRED else name): PIX2PIX_URL.format(name=name)
        for name in PAIRED
    },
}

_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """Network or archive failure, with a message meant for the user."""


@dataclass(frozen=True)
class DownloadResult:
    archive: Path
    folder: Path
    resumed_from: int  # bytes already on disk when this call started


def download_dataset(
    name: str,
    root: str | Path = "datasets",
    *,
    url: str | None = None,
    timeout: float = 30.0,
    progress: bool = True,
    keep_archive: bool = False,
) -> DownloadResult:
    """Download, verify and extract dataset ``name`` into ``root/<name>``.

    ``url`` overrides the standard address (mirrors, tests). Interrupted downloads resume from
    the ``.part`` file; a finished, verified extraction is not downloaded again.
    """
    if url is None:
        if name not in DATASETS:
            raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
        url = DATASETS[name]
    root = Path(root)
    folder = root / name.removesuffix("_pix2pix")
    archive = root / url.rsplit("/", 1)[-1]
    if folder.is_dir() and any(folder.iterdir()) and not archive.exists():
        return DownloadResult(archive, folder, resumed_from=0)
    root.mkdir(parents=True, exist_ok=True)
    part = archive.with_name(archive.name + ".part")
    resumed_from = part.stat().st_size if part.exists() else 0
    if not archive.exists():
        _fetch(url, part, timeout=timeout, progress=progress)
        _verify(part, archive.name)
        part.replace(archive)
    _extract(archive, root)
    if not folder.is_dir():
        raise DownloadError(f"{archive} did not contain a folder named {folder.name!r}")
    if not keep_archive:
        archive.unlink()
    return DownloadResult(archive, folder, resumed_from=resumed_from)


def _fetch(url: str, part: Path, *, timeout: float, progress: bool) -> None:
    """Append the rest of ``url`` to ``part``, using a Range request when part is non-empty."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to fetch: the .part is already complete
            return
        raise DownloadError(f"the server refused {url}: HTTP {err.code} {err.reason}") from None
    except OSError as err:  # URLError, timeouts, refused connections
        reason = getattr(err, "reason", err)
        raise DownloadError(
            f"cannot reach {url} ({reason}). Check the network connection, or download the "
            f"archive by other means and pass its folder with --root, or a mirror with --url."
        ) from None
    with response:
        if have and response.status != 206:  # server ignored the Range header: start over
            have = 0
        total = response.headers.get("Content-Length")
        total = int(total) + have if total is not None else None
        with (
            open(part, "ab" if have else "wb") as out,
            tqdm(
                total=total,
                initial=have,
                unit="B",
                unit_scale=True,
                disable=not progress,
                desc=part.name.removesuffix(".part"),
            ) as bar,
        ):
            try:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as err:
                raise DownloadError(
                    f"download of {url} interrupted ({err}); run the same command again to "
                    f"resume from {out.tell()} bytes"
                ) from None
    if total is not None and part.stat().st_size != total:
        raise DownloadError(
            f"download of {url} is incomplete ({part.stat().st_size} of {total} "
            f"bytes); run the same command again to resume"
        )


def _verify(path: Path, name: str) -> None:
    """Integrity check before extraction: CRCs of a zip, a full read of a tar.gz."""
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
            if bad is not None:
                raise DownloadError(f"corrupt member {bad!r} in {path}")
        else:
            with tarfile.open(path, "r:*") as tf:
                for member in tf:
                    if member.isfile():
                        with tf.extractfile(member) as f:  # type: ignore[union-attr]
                            shutil.copyfileobj(f, _Sink())
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as err:
        path.unlink(missing_ok=True)
        raise DownloadError(
            f"the downloaded archive is damaged ({err}); it was deleted, run "
            f"the command again to download it afresh"
        ) from None


class _Sink:
    def write(self, data: bytes) -> int:
        return len(data)


def _extract(archive: Path, root: Path) -> None:
    target = root.resolve()
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
            _check_members(names, target)
            zf.extractall(root)
    else:
        with tarfile.open(archive, "r:*") as tf:
            members = tf.getmembers()
            _check_members([m.name for m in members], target)
            if any(m.issym() or m.islnk() for m in members):
                raise DownloadError(f"{archive} contains links; refusing to extract it")
            # the "data" filter (Python >= 3.10.12 / 3.11.4) also strips unsafe modes
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tf.extractall(root, **safe)


def _check_members(names: list[str], target: Path) -> None:
    for name in names:
        if not (target / name).resolve().is_relative_to(target):
            raise DownloadError(f"archive member {name!r} would be written outside {target}")
