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
  a refused connection, an HTTP error, a short transfer or a stall is retried ``RETRIES`` times;
- a stall fails the attempt: no byte for ``$JAXNOTES_DOWNLOAD_STALL_S`` seconds (default 30),
  or fewer than ``STALL_MIN_BYTES`` in that long (a server trickling a byte at a time);
- ``$JAXNOTES_DATA_MIRROR`` replaces the base URL (``MIRROR/FILENAME``), for mirrors and
  firewalls; ``JAXNOTES_OFFLINE=1`` (or no network) gives one error listing the manual ways;
- stderr always says what is happening: a line when a download starts and when it ends, one per
  failed attempt, and a progress bar (a terminal) or a progress line every ``PROGRESS_S`` seconds;
- a file found in the folder is used once its SHA-256 matched, checked the first time it is used
  and recorded beside it (``.NAME.sha256``: digest, size and mtime); it is checked again when its
  size or mtime changed. A file that fails is not used (one note line) and is downloaded again.
  A folder where everything is verified is only read: a read-only copy works;
- two processes fetching at once (two runs, or the processes of a multi-host job) take turns
  through a lock file in the data set's folder: the second finds the files verified. The holder
  writes its PID, host and start time into the lock file; a waiter says who it waits for every
  ``LOCK_REPORT_S`` seconds and gives up after ``$JAXNOTES_DOWNLOAD_LOCK_WAIT_S`` seconds
  (default 600) with an error naming the holder's PID.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import math
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

RETRIES = 3  # attempts per file
STALL_S = 30.0  # default of $JAXNOTES_DOWNLOAD_STALL_S: seconds of (nearly) no data that fail
STALL_MIN_BYTES = 1024  # fewer bytes than this in a stall window is a stall too
LOCK_WAIT_S = 600.0  # default of $JAXNOTES_DOWNLOAD_LOCK_WAIT_S: how long to wait for another fetch
LOCK_REPORT_S = 10.0  # seconds between the lines a waiting process prints
LOCK_POLL_S = 0.1
PROGRESS_S = 10.0  # seconds between progress lines when stderr is not a terminal
BACKOFF = 1.0  # seconds before attempt n + 1 is n x BACKOFF
CHUNK = 1 << 16

STALL_VAR = "JAXNOTES_DOWNLOAD_STALL_S"
LOCK_WAIT_VAR = "JAXNOTES_DOWNLOAD_LOCK_WAIT_S"


class DownloadError(RuntimeError):
    """A file could not be fetched or verified (the message says which and why)."""


class DownloadLockTimeout(DownloadError):
    """Another process held the download lock longer than ``$JAXNOTES_DOWNLOAD_LOCK_WAIT_S``."""


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


def seconds_from_env(variable: str, default: float, *, allow_zero: bool = False) -> float:
    """A number of seconds from the environment (``default`` when unset); DownloadError if bad."""
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        least = ">= 0" if allow_zero else "> 0"
        raise DownloadError(f"{variable}={text!r} is not a number of seconds {least}")
    return value


# --- what is already in the folder: verified once, recorded beside the file --------------------


def record_path(path: Path) -> Path:
    """Where the record of ``path``'s verified SHA-256 is kept: ``.NAME.sha256`` beside it."""
    return path.with_name(f".{path.name}.sha256")


def _recorded_digest(path: Path, stat: os.stat_result) -> str | None:
    """The digest recorded for ``path`` if the record is for the file as it is now (same size
    and mtime), else None."""
    try:
        digest, size, mtime_ns = record_path(path).read_text().split()
        if int(size) == stat.st_size and int(mtime_ns) == stat.st_mtime_ns:
            return digest.lower()
    except (OSError, ValueError):
        pass
    return None


def _record(path: Path, digest: str, stat: os.stat_result | None = None) -> None:
    """Record that ``path`` (as ``stat`` saw it) has SHA-256 ``digest``; a folder that cannot be
    written keeps no record (the file is then checked each time it is used)."""
    record = record_path(path)
    tmp = record.with_name(f"{record.name}.{os.getpid()}.tmp")
    try:
        stat = stat or path.stat()
        tmp.write_text(f"{digest} {stat.st_size} {stat.st_mtime_ns}\n")
        os.replace(tmp, record)  # a reader sees the old record or the new one, never half
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def check(entry: Entry, folder: Path) -> tuple[bool, str | None]:
    """Whether ``entry``'s file in ``folder`` can be used: (True, None) when its SHA-256 matched
    (now, or recorded for this size and mtime); (False, None) when it is not there; (False, why)
    when it is there but wrong."""
    path = folder / entry.filename
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False, None
    except OSError as error:
        return False, f"cannot read it ({_reason(error)})"
    if not path.is_file():
        return False, "it is not a file"
    if stat.st_size != entry.size:
        return False, f"it has {stat.st_size:,} bytes, the registry says {entry.size:,}"
    if _recorded_digest(path, stat) == entry.sha256:
        return True, None
    try:
        actual = sha256_of(path)
    except OSError as error:
        return False, f"cannot read it ({_reason(error)})"
    if actual != entry.sha256:
        return False, f"its SHA-256 is {actual}, expected {entry.sha256} (damaged)"
    _record(path, actual, stat)
    return True, None


def is_verified(entry: Entry, folder: Path) -> bool:
    return check(entry, folder)[0]


def source_url(entry: Entry) -> str:
    mirror = os.environ.get("JAXNOTES_DATA_MIRROR", "").strip()
    return f"{mirror.rstrip('/')}/{entry.filename}" if mirror else entry.url


def fetch(entries: list[Entry], folder: Path) -> list[Path]:
    """Every entry's file in ``folder``, downloaded if not already there and verified.

    When every file is there and verified the folder is only read (no lock, nothing written
    but the verification records, and those only where the folder can be written).
    Raises DownloadError (offline, every attempt failed, a wrong digest, a folder that cannot
    be written) or DownloadLockTimeout (another process held the lock too long).
    """
    paths = [folder / entry.filename for entry in entries]
    checks = [check(entry, folder) for entry in entries]
    for entry, (_, why) in zip(entries, checks, strict=True):
        if why is not None:
            _say(f"note: not using {folder / entry.filename}: {why}; downloading it again")
    if all(ok for ok, _ in checks):
        return paths
    unverified = [entry for entry, (ok, _) in zip(entries, checks, strict=True) if not ok]
    if offline():
        raise DownloadError(
            f"JAXNOTES_OFFLINE is set and {len(unverified)} file(s) are not in {folder} "
            f"({', '.join(e.filename for e in unverified)})"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DownloadError(f"cannot create {folder} to download into ({_reason(error)})") from None
    with _Lock(folder / ".download.lock"):
        for entry in unverified:
            if not is_verified(entry, folder):  # another process may have fetched it meanwhile
                _download(entry, folder)
    return paths


def _download(entry: Entry, folder: Path) -> None:
    url, target = source_url(entry), folder / entry.filename
    part = target.with_name(target.name + ".part")
    stall = seconds_from_env(STALL_VAR, STALL_S)
    _say(f"downloading {url} ({_size(entry.size)})")
    problem = "no attempt made"
    for attempt in range(1, RETRIES + 1):
        started = time.monotonic()
        try:
            _stream(url, part, entry.size, stall)
        except _Stalled as error:
            problem = str(error)
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
                _record(target, actual)
                elapsed = time.monotonic() - started
                _say(
                    f"downloaded {entry.filename}: {_size(size)} in {elapsed:.1f} s "
                    f"({_size(size / max(elapsed, 1e-9))}/s), SHA-256 verified"
                )
                return
            problem = f"the transfer stopped at {size:,} of {entry.size:,} bytes"
        part.unlink(missing_ok=True)
        if attempt < RETRIES:
            wait = BACKOFF * attempt
            _say(
                f"attempt {attempt} of {RETRIES} for {entry.filename} failed ({problem}); "
                f"retrying in {wait:g} s"
            )
            time.sleep(wait)
    raise DownloadError(
        f"could not download {entry.filename} from {url} after {RETRIES} attempts ({problem})"
    )


class _Stalled(Exception):
    """An attempt that stopped receiving data (the message says how long and where)."""


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return f"{type(error).__name__}: {error}"


def _stream(url: str, part: Path, expected: int, stall: float) -> None:
    """GET ``url`` into ``part``; raises _Stalled when no byte (or fewer than STALL_MIN_BYTES)
    arrived in ``stall`` seconds."""
    request = urllib.request.Request(url, headers={"User-Agent": "jaxnotes"})
    limit = f"{STALL_VAR}={stall:g}"
    try:
        response = urllib.request.urlopen(request, timeout=stall)  # the socket's timeout
    except urllib.error.URLError as error:
        if isinstance(error.reason, TimeoutError):
            raise _Stalled(f"stalled: no answer in {stall:g} s; {limit}") from None
        raise
    except TimeoutError:
        raise _Stalled(f"stalled: no answer in {stall:g} s; {limit}") from None
    read = getattr(response, "read1", response.read)  # read1: whatever one receive brought
    got = window_bytes = 0
    window_start = time.monotonic()
    with response, open(part, "wb") as out:
        meter = _Meter(part.name[: -len(".part")], expected)
        try:
            while True:
                try:
                    block = read(CHUNK)
                except TimeoutError:
                    raise _Stalled(
                        f"stalled: no data for {stall:g} s ({got:,} of {expected:,} bytes "
                        f"received); {limit}"
                    ) from None
                if not block:
                    return
                out.write(block)
                got += len(block)
                window_bytes += len(block)
                meter.update(len(block))
                now = time.monotonic()
                if now - window_start >= stall:
                    if window_bytes < STALL_MIN_BYTES:  # a trickle: as good as stopped
                        raise _Stalled(
                            f"stalled: only {window_bytes} bytes in {now - window_start:.1f} s "
                            f"({got:,} of {expected:,} bytes received); {limit}"
                        )
                    window_start, window_bytes = now, 0
        finally:
            meter.close()


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


class _Meter:
    """A progress bar when stderr is a terminal, else a line every PROGRESS_S seconds."""

    def __init__(self, name: str, total: int):
        self.name, self.total, self.done = name, total, 0
        self.started = self.last = time.monotonic()
        self.bar = _progress(name, total)
        if self.bar is not None and self.bar.disable:
            self.bar = None

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.last >= PROGRESS_S:
            self.last = now
            rate = self.done / max(now - self.started, 1e-9)
            _say(
                f"  {self.name}: {_size(self.done)} of {_size(self.total)} "
                f"({100 * self.done / max(self.total, 1):.0f}%), {_size(rate)}/s"
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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
    """An exclusive ``flock`` held while files are fetched.

    The holder writes ``pid=... host=... since=...`` into the file; a process that finds the
    lock held says who holds it and for how long every LOCK_REPORT_S seconds, and gives up
    after ``$JAXNOTES_DOWNLOAD_LOCK_WAIT_S`` seconds (DownloadLockTimeout naming the PID).
    The kernel drops a dead holder's lock: a killed download never blocks the next one.
    """

    def __init__(self, path: Path):
        self.path, self.fd = path, None

    def __enter__(self) -> _Lock:
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise DownloadError(
                f"cannot download into {self.path.parent}: {_reason(error)}"
            ) from None
        try:
            self._acquire()
            os.ftruncate(self.fd, 0)
            host, since = socket.gethostname(), time.time()
            os.pwrite(self.fd, f"pid={os.getpid()} host={host} since={since:.3f}\n".encode(), 0)
        except BaseException:
            os.close(self.fd)
            raise
        return self

    def __exit__(self, *exc) -> None:
        import fcntl

        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)  # nobody holds it now
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)

    def _try(self) -> bool:
        import fcntl

        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _acquire(self) -> None:
        if self._try():
            return
        limit = seconds_from_env(LOCK_WAIT_VAR, LOCK_WAIT_S, allow_zero=True)
        start = time.monotonic()
        report = start + min(0.5, LOCK_REPORT_S)  # the holder has written who it is by then
        while True:
            time.sleep(LOCK_POLL_S)
            if self._try():
                return
            now = time.monotonic()
            if now - start >= limit:
                pid, holder = self._holder()
                stop = f"stop it (kill {pid}) or " if pid else ""
                raise DownloadLockTimeout(
                    f"gave up after {limit:g} s waiting for the download lock {self.path}: "
                    f"{holder}; if that process is stuck, {stop}set {LOCK_WAIT_VAR} to wait "
                    "longer"
                )
            if now >= report:
                report = now + LOCK_REPORT_S
                _say(
                    f"waiting for the download lock {self.path}: {self._holder()[1]}; "
                    f"waited {now - start:.0f} s of {limit:g} s ({LOCK_WAIT_VAR})"
                )

    def _holder(self) -> tuple[int | None, str]:
        """(PID, a phrase saying who holds the lock and since when) from the lock file."""
        try:
            fields = dict(item.split("=", 1) for item in os.pread(self.fd, 512, 0).decode().split())
            pid, host, since = int(fields["pid"]), fields["host"], float(fields["since"])
        except (OSError, ValueError, KeyError, UnicodeDecodeError):
            return None, "held by another process (the lock file does not say which)"
        where = "" if host == socket.gethostname() else f" on {host}"
        clock = time.strftime("%H:%M:%S", time.localtime(since))
        return pid, f"held by PID {pid}{where} for {time.time() - since:.0f} s (since {clock})"
