"""Fetch a natural federation's published files: a progress bar, resumption, a checksum.

:func:`fetch` downloads one :class:`RemoteFile` into a folder. The bytes go to ``NAME.part``
first; a ``.part`` left by an interrupted download is continued with an HTTP ``Range`` request
(a server that ignores it sends the whole file, which then replaces the part). The finished
file is checked before it gets its name:

- its length against the published size, or the server's ``Content-Length``;
- its SHA-256 against the published digest where one is known (TFF's ``cifar100.sqlite.lzma``:
  the digest FedJAX's loader pins), else its MD5 against the ``x-goog-hash`` header that
  Google Cloud Storage (where FedJAX and TFF publish) sends with every object (for a
  resumed download, whose response covers only the rest, the length and a published SHA-256).

A file that fails either check is deleted and the error says to run again. ``.lzma`` files are
decompressed (Python's ``lzma``) next to the download. Set ``JAXFL_OFFLINE=1`` to refuse every
download (the tests do: they serve their files from a local HTTP server instead).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import lzma
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from jaxfl.data.natural.store import NaturalDataError

CHUNK = 1 << 20  # bytes read and written at a time
OFFLINE_ENV = "JAXFL_OFFLINE"


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """One published file.

    Attributes:
      url: where it is published.
      sha256: hex SHA-256 of the published bytes, where the publisher (or a loader that pins
        it) states one; None: the server's MD5 header is checked instead.
      size: its length in bytes, where known.
    """

    url: str
    sha256: str | None = None
    size: int | None = None

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def local_name(self) -> str:
        """The name it is read under: a ``.lzma`` file's decompressed name."""
        return self.file_name.removesuffix(".lzma")


def offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "") not in ("", "0")


def _digests(path: Path) -> dict[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            sha.update(block)
            md5.update(block)
    return {"sha256": sha.hexdigest(), "md5": base64.b64encode(md5.digest()).decode()}


def _goog_md5(headers) -> str | None:
    """The base64 MD5 in a Google Cloud Storage ``x-goog-hash: crc32c=...,md5=...`` header."""
    for value in headers.get_all("x-goog-hash") or []:
        for part in value.split(","):
            kind, _, digest = part.strip().partition("=")
            if kind == "md5":
                return digest
    return None


def _open(url: str, start: int, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": "jaxfl"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    return urllib.request.urlopen(request, timeout=timeout)


def fetch(remote: RemoteFile, folder: str | Path, *, progress: bool = True, timeout=60.0) -> Path:
    """Download ``remote`` into ``folder`` (resuming a ``.part`` file), check it, decompress a
    ``.lzma``; returns the path it is read from. An existing file is not downloaded again.

    Raises:
      NaturalDataError: offline, unreachable, or a download that fails its checks (deleted).
    """
    folder = Path(folder)
    local = folder / remote.local_name
    if local.is_file():
        return local
    target = folder / remote.file_name
    if not target.is_file():
        _download(remote, target, progress, timeout)
    if target.suffix == ".lzma":
        _decompress(target, local)
    return local


def _download(remote: RemoteFile, target: Path, progress: bool, timeout: float) -> None:
    if offline():
        raise NaturalDataError(
            f"{target.name} is not in {target.parent} and {OFFLINE_ENV} is set: download "
            f"{remote.url} there yourself, or unset {OFFLINE_ENV}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    try:
        response = _open(remote.url, start, timeout)
    except urllib.error.HTTPError as err:
        if err.code != 416 or not start:  # 416: the part is already the whole file
            raise _unreachable(remote, target, err) from err
        response = None
    except (urllib.error.URLError, OSError) as err:
        raise _unreachable(remote, target, err) from err
    expected_md5 = None
    if response is not None:
        with response:
            resumed = response.status == 206
            if not resumed:
                start = 0  # the server sent the whole file
            length = response.headers.get("Content-Length")
            total = start + int(length) if length is not None else remote.size
            expected_md5 = _goog_md5(response.headers)
            _copy(response, part, "ab" if resumed else "wb", start, total, target.name, progress)
    _check(remote, part, target, expected_md5, start)
    part.rename(target)


def _copy(response, part: Path, mode: str, start: int, total, label: str, progress: bool):
    from tqdm import tqdm

    bar = tqdm(
        total=total, initial=start, unit="B", unit_scale=True, desc=f"downloading {label}",
        disable=not progress, leave=False,
    )  # fmt: skip
    with bar, open(part, mode) as out:
        while block := response.read(CHUNK):
            out.write(block)
            bar.update(len(block))


def _check(remote: RemoteFile, part: Path, target: Path, expected_md5, start: int) -> None:
    size = part.stat().st_size
    digests = _digests(part)
    problem = None
    if remote.size is not None and size != remote.size:
        problem = f"{size:,} bytes, the published file has {remote.size:,}"
    elif remote.sha256 is not None and digests["sha256"] != remote.sha256:
        problem = f"SHA-256 {digests['sha256']}, published {remote.sha256}"
    elif remote.sha256 is None and expected_md5 not in (None, digests["md5"]) and start == 0:
        problem = f"MD5 {digests['md5']}, the server's is {expected_md5}"  # the whole object's
    if problem is not None:
        part.unlink()
        raise NaturalDataError(
            f"the download of {remote.url} is corrupt ({problem}); it was deleted: run again "
            f"(or download it yourself into {target.parent})"
        )


def _decompress(source: Path, target: Path) -> None:
    part = target.with_name(target.name + ".part")
    try:
        with lzma.open(source) as f, open(part, "wb") as out:
            shutil.copyfileobj(f, out, CHUNK)
    except (lzma.LZMAError, EOFError) as err:
        part.unlink(missing_ok=True)
        raise NaturalDataError(
            f"{source} is not a complete .lzma file ({err}); delete it and run again"
        ) from err
    part.rename(target)


def _unreachable(remote: RemoteFile, target: Path, err) -> NaturalDataError:
    return NaturalDataError(
        f"could not download {remote.url} ({err}); download it yourself into {target.parent} "
        "(or another folder given as --data-dir)"
    )
