"""The book's data sets on a fresh machine: the original IDX files, downloaded once and verified.

Where the files come from: TFDS's own registry of URLs, sizes and SHA-256 sums, the
``url_checksums/NAME.txt`` files shipped inside the ``tensorflow_datasets`` package (read as
text: TFDS is not imported, TensorFlow not needed). ``$JAXNOTES_CHECKSUMS_DIR`` points at
another folder of such files (tests, or a registry of your own).

How (the standard library's ``urllib``: four plain HTTP(S) GETs need no dependency; TFDS's own
download manager needs TensorFlow for its ``tf.io.gfile`` file system, which is what the user is
avoiding):

- each file is written to ``NAME.part`` and renamed only once its size and SHA-256 match, so a
  killed download never leaves a file that looks complete; a restarted one starts clean;
- a wrong digest deletes the part file and raises, naming the file and both digests; a timeout,
  a refused connection, an HTTP error or a short transfer is retried ``RETRIES`` times;
- ``$JAXNOTES_DATA_MIRROR`` replaces the base URL (``MIRROR/FILENAME``), for mirrors and
  firewalls; ``JAXNOTES_OFFLINE=1`` (or no network) gives one error listing the manual ways;
- a progress bar shows bytes and rate (when stderr is a terminal);
- two processes fetching at once (two runs, or the processes of a multi-host job) take turns
  through a lock file in the data set's folder: the second finds the files verified.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

RETRIES = 3  # attempts per file
TIMEOUT = 30.0  # seconds without data before an attempt fails
BACKOFF = 1.0  # seconds before attempt n + 1 is n x BACKOFF
CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """A file could not be fetched or verified (the message says which and why)."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One file of a data set: where it is, how big it is and what its SHA-256 is."""

    url: str
    size: int
    sha256: str
    filename: str


def registry_dir() -> Path | None:
    """Where the ``NAME.txt`` checksum files are: ``$JAXNOTES_CHECKSUMS_DIR`` or TFDS's own."""
    if os.environ.get("JAXNOTES_CHECKSUMS_DIR"):
        return Path(os.environ["JAXNOTES_CHECKSUMS_DIR"])
    spec = importlib.util.find_spec("tensorflow_datasets")  # located, not imported
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / "url_checksums"


def registry(name: str) -> list[Entry]:
    """The files of data set ``name`` from the registry (tab- or space-separated lines:
    URL SIZE SHA256 [FILENAME])."""
    folder = registry_dir()
    path = folder / f"{name}.txt" if folder is not None else None
    if path is None or not path.is_file():
        raise DownloadError(
            f"no download registry for {name!r} (looked for {path or 'tensorflow_datasets'}); "
            "pip install tensorflow-datasets (no TensorFlow needed) or set "
            "JAXNOTES_CHECKSUMS_DIR"
        )
    entries = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        url, size, sha = parts[:3]
        filename = parts[3] if len(parts) > 3 else url.rstrip("/").rsplit("/", 1)[-1]
        entries.append(Entry(url, int(size), sha.lower(), filename))
    return entries


def offline() -> bool:
    return os.environ.get("JAXNOTES_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_verified(entry: Entry, folder: Path) -> bool:
    path = folder / entry.filename
    return path.is_file() and path.stat().st_size == entry.size and sha256_of(path) == entry.sha256


def source_url(entry: Entry) -> str:
    mirror = os.environ.get("JAXNOTES_DATA_MIRROR", "").strip()
    return f"{mirror.rstrip('/')}/{entry.filename}" if mirror else entry.url


def fetch(entries: list[Entry], folder: Path) -> list[Path]:
    """Every entry's file in ``folder``, downloaded if not already there and verified.

    Raises DownloadError (offline, every attempt failed, or a wrong digest).
    """
    folder.mkdir(parents=True, exist_ok=True)
    with _Lock(folder / ".download.lock"):
        missing = [entry for entry in entries if not is_verified(entry, folder)]
        if missing and offline():
            raise DownloadError(
                f"JAXNOTES_OFFLINE is set and {len(missing)} file(s) are not in {folder} "
                f"({', '.join(e.filename for e in missing)})"
            )
        for entry in missing:
            _download(entry, folder)
    return [folder / entry.filename for entry in entries]


def _download(entry: Entry, folder: Path) -> None:
    url, target = source_url(entry), folder / entry.filename
    part = target.with_name(target.name + ".part")
    problem = "no attempt made"
    for attempt in range(1, RETRIES + 1):
        try:
            _stream(url, part, entry.size)
        except (urllib.error.URLError, OSError, TimeoutError) as error:
            problem = _reason(error)
        else:
            size = part.stat().st_size
            if size == entry.size:
                actual = sha256_of(part)
                if actual != entry.sha256:
                    part.unlink(missing_ok=True)
                    raise DownloadError(
                        f"{entry.filename} from {url} is corrupt: SHA-256 {actual}, expected "
                        f"{entry.sha256}; nothing was kept"
                    )
                os.replace(part, target)  # complete and verified: only now under its name
                return
            problem = f"the transfer stopped at {size:,} of {entry.size:,} bytes"
        part.unlink(missing_ok=True)
        if attempt < RETRIES:
            time.sleep(BACKOFF * attempt)
    raise DownloadError(
        f"could not download {entry.filename} from {url} after {RETRIES} attempts ({problem})"
    )


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return f"{type(error).__name__}: {error}"


def _stream(url: str, part: Path, expected: int) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "jaxnotes"})
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response, open(part, "wb") as out:
        bar = _progress(part.name[: -len(".part")], expected)
        try:
            while block := response.read(CHUNK):
                out.write(block)
                if bar is not None:
                    bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()


def _progress(name: str, total: int):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(
        total=total, desc=name, unit="B", unit_scale=True, unit_divisor=1024, leave=False,
        disable=None,  # off when stderr is not a terminal
    )  # fmt: skip


class _Lock:
    """An exclusive ``flock`` held while files are fetched (blocks until the holder is done)."""

    def __init__(self, path: Path):
        self.path, self.fd = path, None

    def __enter__(self) -> _Lock:
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        import fcntl

        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
