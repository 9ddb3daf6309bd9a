"""Downloading a natural federation's files (jaxfl/data/natural/download.py), from a local HTTP
server written here that speaks what Google Cloud Storage does: byte ranges (206), the
``x-goog-hash`` MD5 header, and (switchable) a server that ignores ranges or corrupts bytes."""

import base64
import hashlib
import http.server
import lzma
import threading

import numpy as np
import pytest

from jaxfl.data.natural import datasets, download
from jaxfl.data.natural.store import NaturalDataError

from .test_natural import _write_fedjax, _writer_data


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    ranges = True  # False: answer every request with the whole file (200), as some servers do
    corrupt = False  # True: flip a byte of the body (the MD5 header stays the true one's)
    requests: list[tuple[str, str | None]] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        name = self.path.lstrip("/")
        asked = self.headers.get("Range")
        type(self).requests.append((name, asked))
        if name not in self.files:
            self.send_error(404)
            return
        body = self.files[name]
        start = int(asked.removeprefix("bytes=").rstrip("-")) if asked and self.ranges else 0
        if start >= len(body) and asked and self.ranges:
            self.send_error(416)
            return
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        sent = body[start:]
        if self.corrupt:
            sent = bytes([sent[0] ^ 0xFF]) + sent[1:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(sent)))
        self.send_header("x-goog-hash", f"crc32c=AAAAAA==,md5={md5}")
        self.end_headers()
        self.wfile.write(sent)

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def server(monkeypatch):
    monkeypatch.delenv(download.OFFLINE_ENV, raising=False)
    _Handler.files, _Handler.requests = {}, []
    _Handler.ranges, _Handler.corrupt = True, False
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler
    httpd.shutdown()
    httpd.server_close()


def test_a_partial_download_resumes_with_a_range_and_is_checked(server, tmp_path):
    url, handler = server
    body = np.random.default_rng(0).bytes(3 * download.CHUNK + 123)
    handler.files["big.sqlite"] = body
    remote = download.RemoteFile(
        f"{url}/big.sqlite", sha256=hashlib.sha256(body).hexdigest(), size=len(body)
    )
    (tmp_path / "big.sqlite.part").write_bytes(body[:1000])  # an interrupted earlier download
    path = download.fetch(remote, tmp_path, progress=False)
    assert path.read_bytes() == body and not (tmp_path / "big.sqlite.part").exists()
    assert handler.requests == [("big.sqlite", "bytes=1000-")]
    assert download.fetch(remote, tmp_path, progress=False) == path  # there: not fetched again
    assert len(handler.requests) == 1


def test_a_server_that_ignores_ranges_sends_the_whole_file_again(server, tmp_path):
    url, handler = server
    handler.ranges = False
    body = b"0123456789" * 100
    handler.files["f.sqlite"] = body
    (tmp_path / "f.sqlite.part").write_bytes(b"garbage!")
    path = download.fetch(download.RemoteFile(f"{url}/f.sqlite"), tmp_path, progress=False)
    assert path.read_bytes() == body  # the part was replaced, not appended to


def test_a_corrupt_download_fails_its_checksum_and_is_deleted(server, tmp_path):
    url, handler = server
    handler.corrupt = True
    handler.files["f.sqlite"] = b"abcdefgh" * 64
    with pytest.raises(NaturalDataError, match=r"is corrupt \(MD5 .* the server's is .*\); it "
                       "was deleted: run again"):  # fmt: skip
        download.fetch(download.RemoteFile(f"{url}/f.sqlite"), tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []
    pinned = download.RemoteFile(f"{url}/f.sqlite", sha256="0" * 64)  # a published digest
    handler.corrupt = False
    with pytest.raises(NaturalDataError, match="SHA-256 .*, published 0000"):
        download.fetch(pinned, tmp_path, progress=False)
    with pytest.raises(NaturalDataError, match="512 bytes, the published file has 9"):
        download.fetch(download.RemoteFile(f"{url}/f.sqlite", size=9), tmp_path, progress=False)


def test_an_lzma_file_is_decompressed_beside_it(server, tmp_path):
    url, handler = server
    body = b"SQLite format 3\x00" + bytes(range(256)) * 10
    handler.files["data.sqlite.lzma"] = lzma.compress(body)
    path = download.fetch(download.RemoteFile(f"{url}/data.sqlite.lzma"), tmp_path, progress=False)
    assert path.name == "data.sqlite" and path.read_bytes() == body
    (tmp_path / "bad.sqlite.lzma").write_bytes(lzma.compress(body)[:40])  # cut short
    with pytest.raises(NaturalDataError, match="is not a complete .lzma file"):
        download.fetch(download.RemoteFile(f"{url}/bad.sqlite.lzma"), tmp_path, progress=False)


def test_a_missing_data_set_is_downloaded_then_read_like_the_files_given(
    server, tmp_path, monkeypatch
):
    """--dataset emnist62_federated without its files: FedJAX's two files come from the
    published location (here the local server) and load as the same files given directly."""
    url, handler = server
    train, test = _writer_data()
    given = tmp_path / "given"
    given.mkdir()
    for split, clients in (("train", train), ("test", test)):
        _write_fedjax(given / f"federated_emnist_{split}.sqlite", clients)
        handler.files[f"federated_emnist_{split}.sqlite"] = (
            given / f"federated_emnist_{split}.sqlite"
        ).read_bytes()
    source = datasets.SOURCES["emnist62_federated"]
    remotes = tuple(download.RemoteFile(f"{url}/{r.file_name}") for r in source.downloads)
    monkeypatch.setitem(
        datasets.SOURCES, "emnist62_federated", datasets.dataclasses.replace(
            source, downloads=remotes
        )
    )  # fmt: skip
    monkeypatch.setenv("JAXFL_DATA_DIR", str(tmp_path / "cache"))
    fetched = datasets.load_natural("emnist62_federated", None, 4)  # no --data-dir: the cache
    assert sorted(p.name for p in (tmp_path / "cache" / "emnist62_federated").iterdir()) == [
        "federated_emnist_test.sqlite", "federated_emnist_train.sqlite"
    ]  # fmt: skip
    direct = datasets.load_natural("emnist62_federated", given, 4)
    np.testing.assert_array_equal(fetched.train_x, direct.train_x)
    np.testing.assert_array_equal(fetched.test_y, direct.test_y)


def test_offline_or_unreachable_names_the_file_and_what_to_do(server, tmp_path, monkeypatch):
    url, _ = server
    remote = download.RemoteFile(f"{url}/nothing.sqlite")
    with pytest.raises(NaturalDataError, match=r"could not download .*nothing.sqlite \(HTTP "
                       "Error 404"):  # fmt: skip
        download.fetch(remote, tmp_path, progress=False)
    closed = download.RemoteFile("http://127.0.0.1:9/x.sqlite")  # the discard port: refused
    with pytest.raises(NaturalDataError, match="could not download .*download it yourself"):
        download.fetch(closed, tmp_path, progress=False, timeout=5)
    monkeypatch.setenv(download.OFFLINE_ENV, "1")
    with pytest.raises(NaturalDataError, match="JAXFL_OFFLINE is set"):
        download.fetch(remote, tmp_path, progress=False)
    with pytest.raises(NaturalDataError, match="holds none of its files"):  # no attempt at all
        datasets.locate("cifar100_federated", tmp_path)
