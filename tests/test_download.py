"""The book's data from the network, with no internet: a real HTTP server on 127.0.0.1
(tests/http_server.py) that can misbehave on purpose: wrong bytes, a transfer cut short, HTTP
errors, a slow transfer. The faults found by the fault sweep are in tests/test_data_faults.py.
"""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from http_server import FILES, book_arrays, book_folder, serve
from processes import signal_when

from jaxnotes import data
from jaxnotes.data import download


@pytest.fixture
def arrays():
    return book_arrays()


@pytest.fixture
def server(arrays, tmp_path, monkeypatch):
    """The server holding fashion_mnist's four files, and the registry pointing at them."""
    srv = serve(arrays, tmp_path, monkeypatch)
    yield srv
    srv.close()


_folder = book_folder


def test_first_download_then_the_cache_makes_no_request(server, arrays):
    train = data.load("fashion_mnist", "train")
    np.testing.assert_array_equal(train.images[..., 0], arrays["train-images"])
    np.testing.assert_array_equal(train.labels, arrays["train-labels"])
    assert train.class_names[0] == "T-shirt/top" and train.class_names[9] == "Ankle boot"
    assert server.requests == {name: 1 for name in FILES}
    kept = sorted(p.name for p in (_folder() / "idx").iterdir() if not p.name.startswith("."))
    assert kept == sorted(FILES)
    test = data.load("fashion_mnist", "test")  # decoded with train: from the cache
    again = data.load("fashion_mnist", "train")
    np.testing.assert_array_equal(test.labels, arrays["t10k-labels"])
    np.testing.assert_array_equal(again.images, train.images)
    assert server.requests == {name: 1 for name in FILES}  # no request after the first load


def test_a_corrupt_file_is_rejected_naming_both_digests_and_nothing_is_kept(server):
    server.faults["train-images-idx3-ubyte.gz"] = ["corrupt"]
    expected = hashlib.sha256(server.files["train-images-idx3-ubyte.gz"]).hexdigest()
    with pytest.raises(data.DatasetUnavailableError) as error:
        data.load("fashion_mnist", "train")
    message = str(error.value)
    assert "train-images-idx3-ubyte.gz" in message and f"expected {expected}" in message
    assert "is corrupt: SHA-256 " in message
    idx = _folder() / "idx"
    assert not (idx / "train-images-idx3-ubyte.gz").exists()
    assert not list(idx.glob("*.part")) and not list(_folder().glob("*.npz"))


def test_a_truncated_transfer_is_retried(server, arrays):
    server.faults["train-images-idx3-ubyte.gz"] = ["truncate"]
    train = data.load("fashion_mnist", "train")
    np.testing.assert_array_equal(train.images[..., 0], arrays["train-images"])
    assert server.requests["train-images-idx3-ubyte.gz"] == 2


def test_server_errors_are_retried_a_bounded_number_of_times(server, arrays):
    server.faults["train-labels-idx1-ubyte.gz"] = [500, 500]  # then it answers
    assert len(data.load("fashion_mnist", "train")) == 60
    assert server.requests["train-labels-idx1-ubyte.gz"] == 3


def test_a_missing_file_fails_after_the_retries_with_the_http_status(server):
    del server.files["t10k-labels-idx1-ubyte.gz"]
    with pytest.raises(data.DatasetUnavailableError, match="after 3 attempts \\(HTTP 404"):
        data.load("fashion_mnist", "test")
    assert server.requests["t10k-labels-idx1-ubyte.gz"] == download.RETRIES


def test_the_mirror_variable_replaces_the_base_url(server, tmp_path, monkeypatch):
    registry = tmp_path / "registry" / "fashion_mnist.txt"
    registry.write_text(registry.read_text().replace(server.url, "http://127.0.0.1:9"))  # dead
    monkeypatch.setenv("JAXNOTES_DATA_MIRROR", f"{server.url}/some/mirror/")
    assert len(data.load("fashion_mnist", "train")) == 60
    assert server.requests == {name: 1 for name in FILES}


def test_offline_gives_one_error_listing_the_manual_ways(server, monkeypatch):
    monkeypatch.setenv("JAXNOTES_OFFLINE", "1")
    with pytest.raises(data.DatasetUnavailableError) as error:
        data.load("fashion_mnist", "train")
    message = str(error.value)
    assert "JAXNOTES_OFFLINE is set" in message
    for way in ("JAXNOTES_DATA_MIRROR", "idx:<dir>", "TFDS_DATA_DIR"):
        assert way in message
    assert server.requests == {}


def _child_env() -> dict:
    return dict(os.environ)


LOAD = (
    "from jaxnotes import data; d = data.load('fashion_mnist', 'train'); print(int(d.labels.sum()))"
)


def test_a_killed_download_leaves_no_complete_looking_file_and_a_rerun_succeeds(server, arrays):
    server.faults["train-images-idx3-ubyte.gz"] = ["slow"]
    part = _folder() / "idx" / "train-images-idx3-ubyte.gz.part"
    signal_when([sys.executable, "-c", LOAD], part, env=_child_env()).wait()
    assert not (_folder() / "idx" / "train-images-idx3-ubyte.gz").exists()
    done = subprocess.run(
        [sys.executable, "-c", LOAD], env=_child_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip()) == int(arrays["train-labels"].sum())
    assert not part.exists()


def test_concurrent_loads_share_one_download(server, arrays):
    for name in FILES:
        server.faults[name] = ["slow"]  # both processes are inside fetch() at the same time
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", LOAD],
            env=_child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
        assert int(out.strip()) == int(arrays["train-labels"].sum())
    assert server.requests == {name: 1 for name in FILES}  # the second found them verified
