"""``patchcontrast serve``: a local web page that translates images with trained models.

The page (``serve.html``, plain HTML and JavaScript) picks a model, uploads an image or an
example, shows input and translation side by side with a download link and, for contrastive
runs, the patch-similarity histogram and MoNCE transport plan of that image. The server is a
small ASGI app (Starlette, served by uvicorn) with four routes:

* ``GET /``: the page; ``GET /api/models``: the models, the upload limits and the examples;
  ``GET /examples/{i}``: an example image;
* ``POST /api/translate?model=ID&name=FILE[&resize=1]``: the request body is the image file
  itself (no multipart form: the page sends the file as it is, and its upload progress events
  drive the progress bar); the answer is the translation as PNG, written exactly as
  ``patchcontrast translate`` writes it;
* ``POST /api/diagnose?model=ID&name=FILE``: JSON with both figures (PNG data URLs) and the
  statistics of ``patchcontrast diagnose`` for that one image, from ``diagnostics``' functions.

Problems with an upload (not an image, truncated, too many bytes or pixels, a label map a
paired run cannot read) answer JSON ``{"error": message}`` that the page shows; the server keeps
serving. Translation runs in a worker thread, so one client's translation does not hold up the
others' requests; each model has a lock, so two requests never run one network at once (each
still gets its own result, computed from its own upload).
"""

from __future__ import annotations

import base64
import functools
import importlib.util
import io
import socket
import sys
import tempfile
import threading
import time
import traceback
import zlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from torch import nn
from torchvision.utils import save_image

from .config import PairedRunConfig, RunConfig
from .data import list_images, load_image
from .data.folders import UnreadableImageError, build_transform, parse_size
from .pipeline import builtin_root, load_objective, read_input, resize_input
from .translator import Translator

EXTRA = "pip install 'patchcontrast[serve]'"
# module names of the serve extra, imported when the server starts
DEPENDENCIES = ("starlette", "uvicorn")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_EXAMPLES = 8
# seconds an open browser connection may delay the exit after Ctrl-C
GRACEFUL_EXIT_S = 3


class UploadError(ValueError):
    """A request problem that the page reports as it is, with the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What one upload may be: ``max_bytes`` of file, ``max_pixels`` of image (checked on the
    header, before anything is decoded, so a small file with huge dimensions is refused too)."""

    max_bytes: int = 20 * 2**20
    max_pixels: int = 4_000_000


@dataclass
class ServedModel:
    """One model of the page: what ``load_objective`` gives for the path the user named."""

    key: str
    source: Path
    objective: nn.Module
    cfg: RunConfig
    file: Path
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def training_size(self) -> tuple[int, int]:
        return parse_size(self.cfg.data.crop_size, "crop_size")

    @functools.cached_property
    def no_diagnostics(self) -> str | None:
        """Why the diagnostics are not available for this model, or None when they are."""
        from .diagnostics import plan_options

        if isinstance(self.objective, Translator):
            return (
                "not available for this model: it holds the generator alone (an exported "
                "model folder or an imported generator file), and the diagnostics need the "
                "run's patch projection head F (serve the run folder or checkpoint instead)"
            )
        try:
            plan_options(self.objective)
        except ValueError as err:
            return f"not available for this model: {err}"
        return None

    def describe(self) -> dict:
        paired = isinstance(self.cfg, PairedRunConfig)
        return {
            "id": self.key,
            "source": str(self.source),
            "file": str(self.file),
            "kind": "checkpoint"
            if not isinstance(self.objective, Translator)
            else "model folder"
            if self.source.is_dir()
            else "generator file",
            "preset": self.cfg.preset,
            "input": "label map" if paired else "image",
            "training_size": list(self.training_size),
            "diagnostics": self.no_diagnostics,
        }


class _Upload(io.BytesIO):
    """Uploaded bytes that print as the uploaded file's name: ``read_input`` and
    ``load_image`` name the file in their messages, and for an upload that is the name the user
    picked rather than a BytesIO's repr."""

    def __init__(self, data: bytes, label: str) -> None:
        super().__init__(data)
        self.label = label

    def __str__(self) -> str:
        return self.label


def require_dependencies() -> None:
    missing = [name for name in DEPENDENCIES if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"patchcontrast serve needs {' and '.join(missing)}: {EXTRA}")


def load_models(paths: list[str | Path], device: str = "cpu") -> list[ServedModel]:
    """Load every model (run folder, checkpoint file or exported model folder) once; their ids
    are the folder or file names, numbered when two are alike."""
    models: list[ServedModel] = []
    for path in paths:
        objective, cfg, file = load_objective(path, device)
        path = Path(path)
        base = path.resolve().name if path.is_dir() else path.stem
        key, n = base, 2
        while any(m.key == key for m in models):
            key, n = f"{base}-{n}", n + 1
        models.append(ServedModel(key, path, objective.eval(), cfg, file))
    return models


def find_examples(folder: str | Path | None, models: list[ServedModel]) -> list[Path]:
    """Example images: the first images of ``folder``, else the source-domain test images of the
    first unpaired model whose data are on this disk (nothing is rendered or downloaded)."""
    if folder is not None:
        return list_images(folder)[:MAX_EXAMPLES]
    for model in models:
        data = model.cfg.data
        if isinstance(model.cfg, PairedRunConfig) or data.mode == "single_image":
            continue
        root = builtin_root(data) if data.dataroot == "builtin" else Path(data.dataroot)
        test = root / ("testA" if data.direction == "AtoB" else "testB")
        if test.is_dir():
            try:
                return list_images(test)[:MAX_EXAMPLES]
            except ValueError:  # a folder without images
                continue
    return []


def _decoded(data: bytes, name: str, limits: Limits, read):
    """``read(upload)`` after checking the upload's size, bytes and pixels; what cannot be read
    becomes an :class:`UploadError` with a message for the page."""
    if not data:
        raise UploadError(400, "no image received: choose an image file")
    if len(data) > limits.max_bytes:
        raise UploadError(
            413,
            f"{name} is {len(data) / 2**20:.1f} MB; this server accepts "
            f"images up to {limits.max_bytes / 2**20:g} MB (serve --max-upload-mb)",
        )
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            width, height = image.size
    except Image.DecompressionBombError:
        width = height = None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise UploadError(
            415, f"{name} is not an image that this server reads (PNG, JPEG, BMP, TIFF, WebP, ...)"
        ) from None
    if width is None or width * height > limits.max_pixels:
        size = (
            "too many pixels"
            if width is None
            else f"{width}x{height} pixels ({width * height / 1e6:.1f} megapixels)"
        )
        raise UploadError(
            413,
            f"{name} has {size}; this server translates images up to "
            f"{limits.max_pixels / 1e6:g} megapixels (serve --max-megapixels)",
        )
    try:
        return read(_Upload(data, name))
    except UnreadableImageError as err:  # load_image's, e.g. a truncated file
        raise UploadError(
            415, f"{name} could not be decoded ({err.problem}): the file is damaged or incomplete"
        ) from None
    except ValueError as err:  # read_input's own messages, e.g. a colour image for a paired run
        raise UploadError(422, str(err)) from None
    except (OSError, SyntaxError, EOFError, zlib.error) as err:  # e.g. a truncated file
        raise UploadError(
            415, f"{name} could not be decoded ({err}): the file is damaged or incomplete"
        ) from None


def translate_upload(
    model: ServedModel, data: bytes, name: str, limits: Limits, *, resize: bool = False
) -> bytes:
    """The translation of an uploaded file as PNG bytes, read and written as ``patchcontrast
    translate`` does (``resize``: first to the training size, as its ``--size``)."""
    x = _decoded(data, name, limits, lambda upload: read_input(upload, model.cfg))
    if resize:
        x = resize_input(x, model.training_size)
    with model.lock:
        device = next(model.objective.parameters()).device
        y = model.objective.translate(x[None].to(device))[0]
    buffer = io.BytesIO()
    save_image((y + 1) / 2, buffer, format="png")
    return buffer.getvalue()


def diagnose_upload(model: ServedModel, data: bytes, name: str, limits: Limits) -> dict:
    """``patchcontrast diagnose`` of one uploaded image, resized to the run's training size as
    diagnose resizes: both figures as PNG data URLs and the statistics of diagnostics.json."""
    from .diagnostics import (
        patch_similarities,
        plan_options,
        plan_stats,
        plan_title,
        plot_similarity_histograms,
        plot_transport_plan,
        similarity_stats,
        transport_plan,
    )

    if model.no_diagnostics:
        raise UploadError(409, model.no_diagnostics)
    cfg, objective = model.cfg, model.objective
    crop = model.training_size
    image = _decoded(data, name, limits, lambda upload: load_image(upload, cfg.data.channels))
    batch = build_transform(crop, crop, train=False, flip=False)(image)[None]
    layer = cfg.model.nce_layers[-1]
    with model.lock:
        batch = batch.to(next(objective.parameters()).device)
        sims = patch_similarities(objective, batch, seed=0)
        options, source = plan_options(objective)
        plan = transport_plan(objective, batch, num_patches=cfg.model.num_patches, seed=0).cpu()
    with tempfile.TemporaryDirectory() as tmp:
        histogram = plot_similarity_histograms(sims, Path(tmp) / "histogram.png").read_bytes()
        plan_png = plot_transport_plan(
            plan, Path(tmp) / "plan.png", title=plan_title(plan, layer, options, source)
        ).read_bytes()
    return {
        "histogram": _data_url(histogram),
        "plan": _data_url(plan_png),
        "size": list(crop),
        "layers": {
            str(l): similarity_stats(pair["positive"], pair["negative"]) for l, pair in sims.items()
        },
        "transport_plan": {
            "layer": layer,
            "patches": plan.shape[0],
            "options_from": source,
            **plan_stats(plan),
        },
    }


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def create_app(models: list[ServedModel], *, limits: Limits = Limits(), examples: list[Path] = ()):
    """The Starlette app of the page (routes in the module docstring)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    if not models:
        raise ValueError("give at least one model to serve")
    by_key = {model.key: model for model in models}
    page = resources.files(__package__).joinpath("serve.html").read_text(encoding="utf-8")
    examples = list(examples)

    def reported(handler):
        """Answer problems as ``{"error": message}``; an unexpected failure is logged with its
        traceback on the console and reported in one line, and the server goes on."""

        @functools.wraps(handler)
        async def wrapped(request):
            try:
                return await handler(request)
            except UploadError as err:
                return JSONResponse({"error": str(err)}, status_code=err.status)
            except Exception as err:  # noqa: BLE001 - any failure must leave the server up
                traceback.print_exc()
                return JSONResponse(
                    {"error": f"the server failed on this request ({type(err).__name__}: {err})"},
                    status_code=500,
                )

        return wrapped

    def model_of(request) -> ServedModel:
        key = request.query_params.get("model", "")
        if key not in by_key:
            raise UploadError(
                404, f"no model {key!r} on this server; it serves {', '.join(by_key)}"
            )
        return by_key[key]

    async def body(request) -> bytes:
        """The request body, refused as soon as it exceeds the byte limit."""
        declared = request.headers.get("content-length", "")
        too_large = UploadError(
            413,
            f"the upload exceeds {limits.max_bytes / 2**20:g} MB, the "
            "most this server accepts (serve --max-upload-mb)",
        )
        if declared.isdigit() and int(declared) > limits.max_bytes:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_bytes:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    async def index(request):
        return HTMLResponse(page)

    async def model_list(request):
        return JSONResponse(
            {
                "models": [model.describe() for model in models],
                "limits": {"max_bytes": limits.max_bytes, "max_pixels": limits.max_pixels},
                "examples": [
                    {"name": f.name, "url": f"/examples/{i}"} for i, f in enumerate(examples)
                ],
            }
        )

    @reported
    async def example(request):
        index = request.path_params["index"]
        if not 0 <= index < len(examples):
            raise UploadError(404, f"no example {index}")
        return FileResponse(examples[index])

    @reported
    async def translate(request):
        model = model_of(request)
        name = request.query_params.get("name") or "upload"
        resize = request.query_params.get("resize") == "1"
        data = await body(request)
        start = time.perf_counter()
        png = await run_in_threadpool(translate_upload, model, data, name, limits, resize=resize)
        return Response(
            png, media_type="image/png", headers={"X-Seconds": f"{time.perf_counter() - start:.3f}"}
        )

    @reported
    async def diagnose(request):
        model = model_of(request)
        name = request.query_params.get("name") or "upload"
        data = await body(request)
        return JSONResponse(await run_in_threadpool(diagnose_upload, model, data, name, limits))

    return Starlette(
        routes=[
            Route("/", index),
            Route("/api/models", model_list),
            Route("/examples/{index:int}", example),
            Route("/api/translate", translate, methods=["POST"]),
            Route("/api/diagnose", diagnose, methods=["POST"]),
        ]
    )


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, so that a taken port or an unknown host is a one-line error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except socket.gaierror as err:
        raise ValueError(f"cannot listen on --host {host}: {err.strerror}") from None
    except OSError as err:
        raise ValueError(
            f"cannot listen on {host}:{port}: {err.strerror} (choose another "
            "--port, or 0 for any free one)"
        ) from None


def serve(
    models: list[str | Path],
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    device: str = "cpu",
    limits: Limits = Limits(),
    examples: str | Path | None = None,
) -> None:
    """Serve the page until Ctrl-C (which uvicorn turns back into KeyboardInterrupt after a
    graceful shutdown)."""
    require_dependencies()
    import uvicorn

    loaded = load_models(models, device)
    app = create_app(loaded, limits=limits, examples=find_examples(examples, loaded))
    sock = listen(host, port)
    port = sock.getsockname()[1]
    if host not in LOCAL_HOSTS:
        print(
            f"warning: --host {host}: the page is reachable from other machines on the "
            "network, and anyone who reaches it can run these models (there is no login)",
            file=sys.stderr,
            flush=True,
        )
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    print(
        f"serving {len(loaded)} model{'s' * (len(loaded) != 1)} "
        f"({', '.join(m.key for m in loaded)}) on http://{shown}:{port}/ (Ctrl-C stops)",
        flush=True,
    )
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=GRACEFUL_EXIT_S)
    with sock:
        uvicorn.Server(config).run(sockets=[sock])
