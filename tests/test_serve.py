"""``patchcontrast serve``: the app's routes through an HTTP client, a real server with
concurrent clients, the command line, and the page in headless Chromium."""

import base64
import contextlib
import importlib.util
import io
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_export import TINY  # the same 2-step cut-monce run

from patchcontrast import serve
from patchcontrast.cli import main
from patchcontrast.config import resolve_config
from patchcontrast.diagnostics import diagnose
from patchcontrast.export import export_model
from patchcontrast.pipeline import builtin_root, train
from patchcontrast.serve import Limits, create_app, find_examples, listen, load_models

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

ROOT = Path(__file__).resolve().parents[1]
# small limits, so that the refusals are tested with small files
LIMITS = Limits(max_bytes=64 * 1024, max_pixels=200_000)
SCREENSHOT = ROOT / "docs" / "serve.png"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A 2-step cut-monce run (ROOT/run), its export (ROOT/model) and two test images."""
    root = tmp_path_factory.mktemp("serve")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATCHCONTRAST_CACHE", str(root / "cache"))
        cfg = resolve_config("cut-monce", "cpu", run_dir=str(root / "run"), overrides=TINY)
        train(cfg)
        export_model(root / "run", root / "model")
        shutil.copy(sorted((builtin_root(cfg.data) / "testA").iterdir())[0], root / "animal.png")
    noise = np.random.default_rng(0).integers(0, 256, (37, 45, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "noise.png")  # sides that are no multiple of 4
    return root


@pytest.fixture(autouse=True)
def cache(root, monkeypatch):
    monkeypatch.setenv("PATCHCONTRAST_CACHE", str(root / "cache"))


@pytest.fixture(scope="module")
def models(root):
    return load_models([root / "run", root / "model"])


@contextlib.contextmanager
def serving(models, examples, limits: Limits):
    """The page on a free port, served by uvicorn in a thread: its address."""
    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(
        uvicorn.Config(create_app(models, limits=limits, examples=examples), log_level="warning")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, what="the server to start")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def server(models, root):
    with serving(models, [root / "animal.png", root / "noise.png"], LIMITS) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server, trust_env=False, timeout=60) as client:
        yield client


def translated(model: Path, image: Path, *size: str) -> np.ndarray:
    """What ``patchcontrast translate`` writes for one image, as an array."""
    out = Path(tempfile.mkdtemp(prefix="translate-"))
    argv = ["translate", "--checkpoint", str(model), "--input", str(image), "--output", str(out)]
    assert main(argv + (["--size", *size] if size else [])) == 0
    png = np.asarray(Image.open(out / f"{image.stem}.png"))
    shutil.rmtree(out)
    return png


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def post(client, route: str, data: bytes, model: str = "run", name: str = "x.png", **params):
    return client.post(
        f"/api/{route}", content=data, params={"model": model, "name": name, **params}
    )


def header_only_png(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels and holds none: a decompression bomb's
    header, refused before anything is decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_the_page_and_the_model_list(client, root):
    page = client.get("/")
    assert page.status_code == 200 and 'id="output-image"' in page.text
    info = client.get("/api/models").json()
    run, model = info["models"]
    assert (run["id"], run["kind"], run["diagnostics"]) == ("run", "checkpoint", None)
    assert run["file"].endswith("step_00000002.pt") and run["training_size"] == [32, 32]
    assert (model["id"], model["kind"]) == ("model", "model folder")
    assert model["diagnostics"].startswith("not available for this model")
    assert info["limits"] == {"max_bytes": LIMITS.max_bytes, "max_pixels": LIMITS.max_pixels}
    assert [e["name"] for e in info["examples"]] == ["animal.png", "noise.png"]
    assert client.get(info["examples"][0]["url"]).content == (root / "animal.png").read_bytes()
    assert client.get("/examples/5").status_code == 404


@pytest.mark.parametrize("model", ["run", "model"])
@pytest.mark.parametrize("image", ["animal.png", "noise.png"])
def test_a_translation_is_the_png_that_translate_writes(model, image, client, root):
    answer = post(client, "translate", (root / image).read_bytes(), model=model)
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(pixels(answer.content), translated(root / model, root / image))


def test_resize_is_translate_size(client, root):
    answer = post(client, "translate", (root / "noise.png").read_bytes(), resize="1")
    assert pixels(answer.content).shape == (32, 32, 3)
    np.testing.assert_array_equal(
        pixels(answer.content), translated(root / "run", root / "noise.png", "32")
    )


@pytest.mark.parametrize(
    "case",
    [
        "not an image",
        "truncated",
        "empty",
        "too many bytes",
        "too many pixels",
        "decompression bomb",
        "unknown model",
    ],
)
def test_a_bad_upload_gets_a_message_and_the_server_goes_on(case, client, root):
    good = (root / "animal.png").read_bytes()
    data, model = {
        "not an image": (b"name,value\nhello,1\n", "run"),
        "truncated": (good[: len(good) * 2 // 3], "run"),
        "empty": (b"", "run"),
        "too many bytes": (os.urandom(LIMITS.max_bytes + 1), "run"),
        "too many pixels": (_png(Image.new("RGB", (600, 400))), "run"),
        "decompression bomb": (header_only_png(20_000, 20_000), "run"),
        "unknown model": (good, "nope"),
    }[case]
    status, message = {
        "not an image": (415, "up.png is not an image that this server reads"),
        "truncated": (415, "up.png could not be decoded (image file is truncated"),
        "empty": (400, "no image received"),
        "too many bytes": (413, "the upload exceeds 0.0625 MB"),
        "too many pixels": (
            413,
            "up.png has 600x400 pixels (0.2 megapixels); this server "
            "translates images up to 0.2 megapixels (serve --max-megapixels)",
        ),
        "decompression bomb": (413, "up.png has too many pixels"),
        "unknown model": (404, "no model 'nope' on this server; it serves run, model"),
    }[case]
    for route in ("translate", "diagnose"):
        answer = post(client, route, data, model=model, name="up.png")
        assert answer.status_code == status
        assert answer.json()["error"].startswith(message)
        assert "\n" not in answer.json()["error"]
    assert post(client, "translate", good).status_code == 200


def test_a_failure_inside_is_one_line_and_the_server_goes_on(client, models, root, capsys):
    data = (root / "animal.png").read_bytes()
    objective = models[0].objective

    def broken(images):
        raise RuntimeError("out of memory (simulated)")

    objective.translate = broken
    try:
        answer = post(client, "translate", data)
    finally:
        del objective.translate
    assert answer.status_code == 500
    assert answer.json() == {
        "error": "the server failed on this request (RuntimeError: out of memory (simulated))"
    }
    assert "Traceback" in capsys.readouterr().err  # for the console, not the page
    assert post(client, "translate", data).status_code == 200


def test_diagnostics_are_those_of_diagnose(client, root, tmp_path):
    data = (root / "animal.png").read_bytes()
    report = post(client, "diagnose", data).json()
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(root / "animal.png", folder)
    expected = diagnose(root / "run", folder, tmp_path / "diag", progress=False)
    assert report["layers"] == expected["layers"]
    plan = {k: v for k, v in expected["transport_plan"].items() if k not in ("image", "options")}
    assert report["transport_plan"] == plan
    for figure in ("histogram", "plan"):
        png = base64.b64decode(report[figure].removeprefix("data:image/png;base64,"))
        assert Image.open(io.BytesIO(png)).format == "PNG"
    answer = post(client, "diagnose", data, model="model")
    assert answer.status_code == 409
    assert answer.json()["error"].startswith(
        "not available for this model: it holds the generator alone"
    )


class CountingLock:
    """A model lock that counts the requests waiting for it, so that a test can hold it until
    every request it sent is in flight."""

    def __init__(self) -> None:
        self.lock, self.waiting = threading.Lock(), 0

    def __enter__(self):
        self.waiting += 1  # += under the GIL is enough for a counter read by one test
        self.lock.acquire()
        self.waiting -= 1
        return self

    def __exit__(self, *exc):
        self.lock.release()


def wait_for(condition, timeout: float = 30.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_concurrent_clients_each_get_their_own_result_and_the_page_stays_up(server, models, root):
    url = server
    lock = models[0].lock = CountingLock()
    results = {}

    def request(image):
        with httpx.Client(trust_env=False, timeout=60) as http:
            results[image] = http.post(
                f"{url}/api/translate",
                content=(root / image).read_bytes(),
                params={"model": "run", "name": image},
            )

    threads = [
        threading.Thread(target=request, args=(image,)) for image in ("animal.png", "noise.png")
    ]
    with lock.lock:  # both translations wait while another request is answered
        for thread in threads:
            thread.start()
        wait_for(lambda: lock.waiting == 2, what="both requests to be in flight")
        assert httpx.get(f"{url}/api/models", trust_env=False, timeout=5).status_code == 200
    for thread in threads:
        thread.join(timeout=60)
    for image, answer in results.items():
        assert answer.status_code == 200
        np.testing.assert_array_equal(
            pixels(answer.content), translated(root / "run", root / image)
        )


def test_the_command_serves_until_ctrl_c_and_warns_about_other_machines(root):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "patchcontrast",
            "serve",
            "--model",
            str(root / "model"),
            "--host",
            "0.0.0.0",
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        warning = process.stderr.readline()
        line = process.stdout.readline()
        assert warning.startswith(
            "warning: --host 0.0.0.0: the page is reachable from other machines"
        ), warning
        assert line.startswith("serving 1 model (model) on http://127.0.0.1:"), line
        url = line.split(" on ")[1].split()[0]
        wait_for(lambda: _answers(url), timeout=30, what="the command's server")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
        assert "Traceback" not in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}api/models", trust_env=False, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_command_line_errors_are_one_line(root, monkeypatch, capsys):
    def error(argv):
        with pytest.raises(SystemExit) as exit_info:
            main(["serve", *argv])
        assert exit_info.value.code == 2
        return capsys.readouterr().err.strip()

    with listen("127.0.0.1", 0) as taken:
        port = taken.getsockname()[1]
        message = error(["--model", str(root / "model"), "--port", str(port)])
    assert message.startswith(f"patchcontrast serve: error: cannot listen on 127.0.0.1:{port}: ")
    assert "\n" not in message
    message = error(["--model", str(root / "animal.png")])
    assert "animal.png" in message and "\n" not in message
    message = error(["--model", str(root / "model"), "--max-megapixels", "0"])
    assert message.endswith("--max-upload-mb and --max-megapixels must be positive")
    monkeypatch.setattr(serve, "DEPENDENCIES", ("starlette", "no_such_module_for_serve"))
    assert error(["--model", str(root / "model")]) == (
        "patchcontrast serve: error: patchcontrast serve needs no_such_module_for_serve: "
        "pip install 'patchcontrast[serve]'"
    )


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def chromium():
    """A headless Chromium driven by Debian's chromedriver, or a skip; under CI (CI=true), whose
    `make test` installs them, a missing piece is a failure."""
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    missing = [
        name
        for name, found in (
            ("chromium", binary),
            ("chromedriver", driver),
            ("selenium", importlib.util.find_spec("selenium")),
        )
        if not found
    ]
    if missing:
        message = (
            f"the browser test needs {' and '.join(missing)} (`make browser` installs "
            "Debian's chromium and chromium-driver, the test extra selenium)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1120,1500",
        "--no-proxy-server",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_the_page_in_a_browser_shows_the_translation_that_translate_writes(models, root, tmp_path):
    """Upload in Chromium while another client translates; the page shows (and offers for
    download) exactly the PNG of `patchcontrast translate`. PATCHCONTRAST_WRITE_SCREENSHOT=1
    writes the screenshot to docs/serve.png, with PATCHCONTRAST_SCREENSHOT_MODEL=PATH (e.g.
    runs/demo) served instead of the 2-step test run and its first example uploaded."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    shot = os.environ.get("PATCHCONTRAST_SCREENSHOT_MODEL")
    served = load_models([shot]) if shot else models
    upload = (
        (find_examples(None, served) or [root / "animal.png"])[0] if shot else root / "animal.png"
    )
    model, key = served[0], served[0].key
    lock = model.lock = CountingLock()
    browser = chromium()
    try:
        with serving(served, [upload, root / "noise.png"], Limits()) as url:
            browser.get(url)
            WebDriverWait(browser, 30).until(
                lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "ready"
            )
            other = {}
            with lock.lock:  # the page and another client translate at the same time
                browser.find_element(By.ID, "file").send_keys(str(upload))
                client = threading.Thread(
                    target=lambda: other.update(
                        answer=httpx.post(
                            f"{url}/api/translate",
                            content=(root / "noise.png").read_bytes(),
                            params={"model": key, "name": "noise.png"},
                            trust_env=False,
                            timeout=60,
                        )
                    )
                )
                client.start()
                wait_for(lambda: lock.waiting == 2, what="the page's and the client's requests")
                # the upload is complete and the translation waits: the progress bar is full
                WebDriverWait(browser, 30).until(
                    lambda b: b.find_element(By.ID, "message").text == "translating"
                )
                progress = browser.find_element(By.ID, "progress")
                assert progress.is_displayed() and float(progress.get_attribute("value")) == 1
            client.join(timeout=60)
            WebDriverWait(browser, 60).until(
                lambda b: (
                    b.find_element(By.TAG_NAME, "body").get_attribute("data-state")
                    in ("done", "error")
                )
            )
            message = browser.find_element(By.ID, "message").text
            assert message == f"translated {upload.name} with {key}"
            assert not browser.find_element(By.ID, "progress").is_displayed()
            shown = base64.b64decode(browser.execute_async_script(FETCH_IMAGE, "output-image"))
            np.testing.assert_array_equal(pixels(shown), translated(model.source, upload))
            np.testing.assert_array_equal(
                pixels(other["answer"].content), translated(model.source, root / "noise.png")
            )
            download = browser.find_element(By.ID, "download")
            assert download.get_attribute("download") == f"{upload.stem}_translated.png"
            assert download.get_attribute("href") == browser.find_element(
                By.ID, "output-image"
            ).get_attribute("src")
            WebDriverWait(browser, 60).until(
                lambda b: b.find_element(By.ID, "diagnostics").get_attribute("data-state") == "done"
            )
            for figure in ("histogram", "plan"):
                assert (
                    browser.execute_script(
                        f"return document.getElementById('{figure}').naturalWidth"
                    )
                    > 100
                )
            target = (
                SCREENSHOT
                if os.environ.get("PATCHCONTRAST_WRITE_SCREENSHOT") == "1"
                else tmp_path / "serve.png"
            )
            assert browser.save_screenshot(str(target))
            Image.open(target).verify()
            # a file that is no image: a message on the page, and the page goes on translating
            (tmp_path / "notes.png").write_text("not an image")
            messages = []
            for file, state in ((tmp_path / "notes.png", "error"), (upload, "done")):
                browser.find_element(By.ID, "file").send_keys(str(file))
                WebDriverWait(browser, 60).until(
                    lambda b, state=state: (
                        b.find_element(By.TAG_NAME, "body").get_attribute("data-state") == state
                    )
                )
                messages.append(browser.find_element(By.ID, "message").text)
            assert messages == [
                "notes.png is not an image that this server reads (PNG, JPEG, "
                "BMP, TIFF, WebP, ...)",
                f"translated {upload.name} with {key}",
            ]
    finally:
        browser.quit()


# Selenium's asynchronous script: the bytes behind an <img>'s src (a blob: URL) as base64.
FETCH_IMAGE = """
const done = arguments[arguments.length - 1];
fetch(document.getElementById(arguments[0]).src)
  .then((answer) => answer.arrayBuffer())
  .then((buffer) => {
    let text = "";
    for (const byte of new Uint8Array(buffer)) text += String.fromCharCode(byte);
    done(btoa(text));
  });
"""
