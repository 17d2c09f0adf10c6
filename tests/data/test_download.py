"""Dataset download against a local HTTP server serving generated archives."""

import http.server
import io
import tarfile
import threading
import zipfile

import pytest

from patchcontrast.data.download import DATASETS, DownloadError, download_dataset


def _zip_bytes(name: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for split in ("trainA", "trainB", "testA", "testB"):
            for i in range(3):
                zf.writestr(f"{name}/{split}/{i}.txt", f"{split}-{i}-" + "x" * 5000)
    return buf.getvalue()


def _tar_bytes(name: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        data = b"pixels" * 1000
        info = tarfile.TarInfo(f"{name}/train/1.jpg")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class _Server:
    """Serves ``files`` with Range support; ``cut_after`` drops the first full response early."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.cut_after, self.ranges = files, None, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                header = self.headers.get("Range")
                server.ranges.append(header)
                if header:
                    start = int(header.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if server.cut_after is not None and not header:
                    payload, server.cut_after = payload[: server.cut_after], None
                    self.wfile.write(payload)
                    self.wfile.flush()
                    self.connection.shutdown(2)  # simulate a dropped connection
                    return
                self.wfile.write(payload)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server(
        {
            "/toy.zip": _zip_bytes("toy"),
            "/pairs.tar.gz": _tar_bytes("pairs"),
            "/broken.zip": _zip_bytes("broken")[:-200],
        }
    )
    yield s
    s.close()


def test_standard_urls_are_registered():
    assert DATASETS["horse2zebra"].endswith("/cyclegan/datasets/horse2zebra.zip")
    assert DATASETS["facades_pix2pix"].endswith("/pix2pix/datasets/facades.tar.gz")
    assert DATASETS["edges2shoes"].endswith("/pix2pix/datasets/edges2shoes.tar.gz")


def test_download_verifies_and_extracts_zip(server, tmp_path):
    result = download_dataset("toy", tmp_path, url=f"{server.url}/toy.zip", progress=False)
    assert result.folder == tmp_path / "toy"
    assert sorted(p.name for p in result.folder.iterdir()) == ["testA", "testB", "trainA", "trainB"]
    assert (tmp_path / "toy/trainA/2.txt").read_text().startswith("trainA-2-")
    assert not list(tmp_path.glob("*.zip*"))  # archive removed after extraction


def test_download_extracts_tar_gz(server, tmp_path):
    result = download_dataset("pairs", tmp_path, url=f"{server.url}/pairs.tar.gz", progress=False)
    assert (result.folder / "train/1.jpg").read_bytes() == b"pixels" * 1000


def test_interrupted_download_resumes_with_range(server, tmp_path):
    server.cut_after = 4000
    with pytest.raises(DownloadError, match="run the same command again"):
        download_dataset("toy", tmp_path, url=f"{server.url}/toy.zip", progress=False)
    assert (tmp_path / "toy.zip.part").stat().st_size == 4000
    result = download_dataset("toy", tmp_path, url=f"{server.url}/toy.zip", progress=False)
    assert result.resumed_from == 4000
    assert server.ranges[-1] == "bytes=4000-"
    assert (tmp_path / "toy/testB/0.txt").exists()


def test_second_call_does_not_download_again(server, tmp_path):
    download_dataset("toy", tmp_path, url=f"{server.url}/toy.zip", progress=False)
    requests = len(server.ranges)
    download_dataset("toy", tmp_path, url=f"{server.url}/toy.zip", progress=False)
    assert len(server.ranges) == requests


def test_damaged_archive_is_rejected_and_deleted(server, tmp_path):
    with pytest.raises(DownloadError, match="damaged"):
        download_dataset("broken", tmp_path, url=f"{server.url}/broken.zip", progress=False)
    assert not list(tmp_path.glob("broken*"))


def test_unreachable_network_is_a_clear_error(tmp_path):
    with pytest.raises(DownloadError, match="cannot reach .*Check the network connection"):
        download_dataset(
            "toy", tmp_path, url="http://127.0.0.1:9/toy.zip", timeout=2, progress=False
        )


def test_http_error_and_unknown_name(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_dataset("nope", tmp_path, url=f"{server.url}/nope.zip", progress=False)
    with pytest.raises(ValueError, match="unknown dataset 'horse3zebra'"):
        download_dataset("horse3zebra", tmp_path)


def test_archive_escaping_root_is_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../evil.txt", "x")
    s = _Server({"/evil.zip": buf.getvalue()})
    try:
        with pytest.raises(DownloadError, match="outside"):
            download_dataset("evil", tmp_path / "root", url=f"{s.url}/evil.zip", progress=False)
    finally:
        s.close()
    assert not (tmp_path / "evil.txt").exists()
