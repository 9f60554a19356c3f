"""The faults a sweep found in the book's data path, each played for real against a local server.

Each case was first seen as a user sees it (``python -m train --dataset fashion_mnist`` with
``$JAXNOTES_DATA_DIR`` / ``$JAXNOTES_DATA_MIRROR`` at a local server); here each is played with
the same pieces, faster: a real HTTP server on 127.0.0.1 (tests/http_server.py) that trickles
bytes, a real second process holding the download lock, a really read-only folder, damaged files
on disk. Each test checks the outcome and the one line the user reads (no traceback).
"""

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from http_server import FILES, book_arrays, book_folder, serve

from jaxnotes import data
from jaxnotes.data import download


@pytest.fixture
def arrays():
    return book_arrays()


@pytest.fixture
def server(arrays, tmp_path, monkeypatch):
    srv = serve(arrays, tmp_path, monkeypatch)
    yield srv
    srv.close()


LOAD = (
    "from jaxnotes import data; d = data.load('fashion_mnist', 'train'); print(int(d.labels.sum()))"
)


def _digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _notes(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("note:")]


def _same(dataset, arrays, split="train"):
    prefix = "train" if split == "train" else "t10k"
    np.testing.assert_array_equal(dataset.images[..., 0], arrays[f"{prefix}-images"])
    np.testing.assert_array_equal(dataset.labels, arrays[f"{prefix}-labels"])


# --- 1. a mirror that trickles: each attempt fails on a stall, then one line names URL and stall


@pytest.mark.parametrize("interval", [2.0, 0.05], ids=["byte-every-2s", "byte-every-50ms"])
def test_a_stalled_mirror_fails_each_attempt_then_says_so_in_one_line(
    server, monkeypatch, capfd, interval
):
    # 2 s between bytes: nothing arrives for the whole stall time. 50 ms: bytes keep coming, too
    # few to ever finish (the sweep's case: the socket timeout alone never fires on it).
    name = "train-images-idx3-ubyte.gz"
    server.faults[name] = [("trickle", interval)] * download.RETRIES
    monkeypatch.setenv("JAXNOTES_DATA_MIRROR", f"{server.url}/mirror")
    monkeypatch.setenv("JAXNOTES_DOWNLOAD_STALL_S", "1")
    start = time.monotonic()
    with pytest.raises(data.DatasetUnavailableError) as error:
        data.load("fashion_mnist", "train")
    assert time.monotonic() - start < 8  # three attempts of about one second
    url = f"{server.url}/mirror/{name}"
    first = str(error.value).splitlines()[0]
    assert f"could not download {name} from {url} after 3 attempts (stalled: " in first
    assert "JAXNOTES_DOWNLOAD_STALL_S=1)" in first
    assert error.value.__cause__ is None and error.value.__suppress_context__
    assert server.requests[name] == download.RETRIES
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert f"downloading {url} (" in err  # said before the wait, not only after
    assert err.count(f"attempt 1 of 3 for {name} failed (stalled: ") == 1
    assert err.count(f"attempt 2 of 3 for {name} failed (stalled: ") == 1
    assert not list((book_folder() / "idx").glob("*.part"))


def test_a_download_reports_start_progress_and_end_on_stderr_when_not_a_terminal(
    server, arrays, monkeypatch, capfd
):
    monkeypatch.setattr(download, "PROGRESS_S", 0.2)
    server.faults["train-images-idx3-ubyte.gz"] = ["slow"]  # about a second
    _same(data.load("fashion_mnist", "train"), arrays)
    err = capfd.readouterr().err
    assert not sys.stderr.isatty()
    lines = err.splitlines()
    for name in FILES:
        url = f"{server.url}/fashion_mnist/{name}"
        assert any(line.startswith(f"downloading {url} (") for line in lines)  # (47.1 kB)
        ends = [line for line in lines if line.startswith(f"downloaded {name}: ")]
        assert len(ends) == 1 and ends[0].endswith("/s), SHA-256 verified")
    progress = [line for line in err.splitlines() if line.startswith("  train-images-idx3")]
    assert progress and all("%)" in line and "/s" in line for line in progress)


# --- 2. a second process behind a stalled download's lock: says who holds it, then gives up


def test_a_process_waiting_for_the_lock_names_the_holder_and_gives_up_at_the_deadline(
    server, arrays, monkeypatch, capfd
):
    name = "train-images-idx3-ubyte.gz"
    server.faults[name] = [("trickle", 0.05)]  # the holder's download crawls
    idx = book_folder() / "idx"
    env = {**os.environ, "JAXNOTES_DOWNLOAD_STALL_S": "120"}  # and is in no hurry to give up
    holder = subprocess.Popen(
        [sys.executable, "-c", LOAD], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while not (idx / f"{name}.part").exists():  # the holder has the lock and is downloading
            assert holder.poll() is None, holder.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert f"pid={holder.pid} " in (idx / ".download.lock").read_text()
        monkeypatch.setenv("JAXNOTES_DOWNLOAD_LOCK_WAIT_S", "2")
        monkeypatch.setattr(download, "LOCK_REPORT_S", 0.5)
        start = time.monotonic()
        with pytest.raises(data.DatasetUnavailableError) as error:
            data.load("fashion_mnist", "train")
        assert 2 <= time.monotonic() - start < 6
        message = str(error.value)
        assert "\n" not in message and error.value.__cause__ is None
        assert message.startswith("gave up after 2 s waiting for the download lock ")
        assert f"held by PID {holder.pid} for " in message
        assert f"kill {holder.pid}" in message and "JAXNOTES_DOWNLOAD_LOCK_WAIT_S" in message
        err = capfd.readouterr().err
        assert "Traceback" not in err
        waits = [line for line in err.splitlines() if line.startswith("waiting for the download")]
        assert len(waits) >= 2, err  # every LOCK_REPORT_S, first after half a second
        assert all(f"held by PID {holder.pid} for " in line for line in waits)
        assert all(" s of 2 s (JAXNOTES_DOWNLOAD_LOCK_WAIT_S)" in line for line in waits)
    finally:
        holder.kill()
        holder.wait()
    # The kernel dropped the killed holder's lock: the next load takes it and downloads.
    _same(data.load("fashion_mnist", "train"), arrays)


# --- 3. a read-only data folder that holds the four verified files


@contextlib.contextmanager
def _read_only(folder: Path):
    """Yield a command prefix under which ``folder`` is read-only.

    Not root: chmod a-w (undone afterwards). Root ignores permissions, so there the command runs
    in a private user and mount namespace (``unshare -rm``) with ``folder`` bind-mounted
    read-only onto itself; the mount goes away with the process.
    """
    if os.geteuid() != 0:
        folders = [folder, *(p for p in folder.rglob("*") if p.is_dir())]
        for path in folders:
            path.chmod(0o555)
        try:
            yield []
        finally:
            for path in folders:
                path.chmod(0o755)
        return
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    prefix = ["unshare", "--map-root-user", "--mount", "sh", "-c", script, str(folder)]
    probe = None
    if shutil.which("unshare"):
        probe = subprocess.run(
            [*prefix, "sh", "-c", 'touch "$0/.probe"', str(folder)], capture_output=True, text=True
        )
    if probe is None or "Read-only file system" not in probe.stderr:
        pytest.skip(
            "running as root (chmod stops nothing) and no read-only bind mount here "
            f"(unshare -rm: {probe.stderr.strip() if probe else 'not installed'}); "
            "test_a_decoded_cache_that_cannot_be_written_is_skipped_with_one_note covers the write"
        )
    yield prefix


def test_a_read_only_data_folder_holding_the_verified_files_is_read_where_it_is(server, arrays):
    _same(data.load("fashion_mnist", "train"), arrays)
    folder = book_folder()
    for path in [*folder.glob("*.npz"), *(folder / "idx").glob(".*")]:
        path.unlink()  # leave just the four files: no decoded cache, lock file or records
    assert sorted(p.name for p in (folder / "idx").iterdir()) == sorted(FILES)
    before, requests = _digests(folder), dict(server.requests)
    env = {**os.environ, "JAXNOTES_OFFLINE": "1"}  # nothing to fetch: prove it
    with _read_only(folder) as prefix:
        done = subprocess.run(
            [*prefix, sys.executable, "-c", LOAD], env=env, capture_output=True, text=True
        )
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.strip()) == int(arrays["train-labels"].sum())
    notes = _notes(done.stderr)
    assert len(notes) == 1, done.stderr
    assert notes[0].startswith(f"note: cannot keep the decoded arrays in {folder} (")
    assert notes[0].endswith("; decoded in memory this time")
    assert _digests(folder) == before and server.requests == requests  # nothing lost or fetched


def test_a_decoded_cache_that_cannot_be_written_is_skipped_with_one_note(server, arrays, capfd):
    """The same without a read-only mount: a folder sits where each split's cache is written."""
    data.load("fashion_mnist", "train")
    folder = book_folder()
    for split in ("train", "test"):
        (folder / f"{split}.npz").unlink()
        (folder / f"{split}.{os.getpid()}.tmp.npz").mkdir()  # the file written, then renamed
    before, requests = _digests(folder / "idx"), dict(server.requests)
    capfd.readouterr()
    _same(data.load("fashion_mnist", "test"), arrays, "test")
    notes = _notes(capfd.readouterr().err)
    assert len(notes) == 1 and "decoded in memory this time" in notes[0]
    assert "IsADirectoryError" in notes[0]
    assert not (folder / "train.npz").exists() and not (folder / "test.npz").exists()
    assert _digests(folder / "idx") == before and server.requests == requests


# --- 4. a damaged decoded cache (NAME/SPLIT.npz) is rebuilt


DAMAGE = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "not-a-zip": lambda p: p.write_text("this is not a zip file\n"),
    "missing-keys": lambda p: np.savez(p, images=np.zeros((1, 28, 28, 1), np.uint8)),
    "empty": lambda p: p.write_bytes(b""),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_decoded_cache_is_rebuilt_from_the_verified_files(server, arrays, capfd, damage):
    data.load("fashion_mnist", "train")
    stored = book_folder() / "train.npz"
    DAMAGE[damage](stored)
    before, requests = _digests(book_folder() / "idx"), dict(server.requests)
    capfd.readouterr()
    _same(data.load("fashion_mnist", "train"), arrays)
    notes = _notes(capfd.readouterr().err)
    assert len(notes) == 1 and notes[0].startswith(
        f"note: cannot read the decoded cache {stored} ("
    )
    assert notes[0].endswith("; rebuilding it")
    assert server.requests == requests  # from the files beside it: no download
    assert _digests(book_folder() / "idx") == before
    _same(data.load("fashion_mnist", "train"), arrays)  # the rebuilt cache reads cleanly
    assert capfd.readouterr().err == ""


def test_a_damaged_decoded_cache_without_the_files_beside_it_is_downloaded_again(
    server, arrays, capfd
):
    data.load("fashion_mnist", "train")
    shutil.rmtree(book_folder() / "idx")
    (book_folder() / "train.npz").write_text("damaged")
    capfd.readouterr()
    _same(data.load("fashion_mnist", "train"), arrays)
    assert len(_notes(capfd.readouterr().err)) == 1
    assert server.requests == {name: 2 for name in FILES}


# --- 5. a file in the download cache: hashed once, recorded, a damaged one refused and fetched


def test_a_cached_file_is_hashed_once_then_trusted_while_its_size_and_mtime_hold(
    server, monkeypatch
):
    data.load("fashion_mnist", "train")
    idx = book_folder() / "idx"
    for name in FILES:
        record = download.record_path(idx / name).read_text().split()
        assert record[0] == hashlib.sha256(server.files[name]).hexdigest()
    hashed = []
    real = download.sha256_of
    monkeypatch.setattr(download, "sha256_of", lambda path: hashed.append(path.name) or real(path))
    for npz in book_folder().glob("*.npz"):
        npz.unlink()
    data.load("fashion_mnist", "train")
    assert hashed == []  # the records vouch for all four
    touched = idx / FILES[1]
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same bytes, new mtime
    for npz in book_folder().glob("*.npz"):
        npz.unlink()
    data.load("fashion_mnist", "train")
    assert hashed == [FILES[1]]  # checked again, once
    assert download.record_path(touched).read_text().split()[2] == str(stat.st_mtime_ns + 10**9)
    assert server.requests == {name: 1 for name in FILES}


def test_a_same_size_damaged_cached_file_is_refused_with_one_note_and_fetched_again(
    server, arrays, capfd
):
    data.load("fashion_mnist", "train")
    name = "train-labels-idx1-ubyte.gz"
    path = book_folder() / "idx" / name
    good = hashlib.sha256(server.files[name]).hexdigest()
    body = bytearray(path.read_bytes())
    body[len(body) // 2] ^= 0xFF  # one flipped byte: same size
    path.write_bytes(bytes(body))
    bad = hashlib.sha256(body).hexdigest()
    for npz in book_folder().glob("*.npz"):
        npz.unlink()
    capfd.readouterr()
    _same(data.load("fashion_mnist", "train"), arrays)
    notes = _notes(capfd.readouterr().err)
    assert notes == [
        f"note: not using {path}: its SHA-256 is {bad}, expected {good} (damaged); "
        "downloading it again"
    ]
    assert server.requests == {n: 2 if n == name else 1 for n in FILES}
    assert hashlib.sha256(path.read_bytes()).hexdigest() == good
    assert download.record_path(path).read_text().split()[0] == good
