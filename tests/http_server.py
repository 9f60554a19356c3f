"""A real HTTP server on 127.0.0.1 serving the book's four IDX files, for the download tests.

The server (``http.server`` in a thread) serves four small IDX files the test writes, and can
misbehave on purpose: wrong bytes, a transfer cut short, HTTP errors, a slow or trickling
transfer. Their URLs, sizes and SHA-256 sums reach the downloader through the same registry
mechanism TFDS's own files use (a ``NAME.txt`` in ``$JAXNOTES_CHECKSUMS_DIR``).

Used by tests/test_download.py and tests/test_data_faults.py: each defines its ``arrays`` and
``server`` fixtures as one call to ``book_arrays`` and ``serve`` (fixtures imported from another
module would be invisible to ruff and shadowed by the test arguments).
"""

import hashlib
import http.server
import os
import threading
import time
from pathlib import Path

import numpy as np

from jaxnotes import data
from jaxnotes.data import download

FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def book_arrays() -> dict[str, np.ndarray]:
    """Small stand-ins for the four files' arrays (60 train and 20 test images)."""
    rng = np.random.default_rng(0)
    return {
        "train-images": rng.integers(0, 256, (60, 28, 28), dtype=np.uint8),
        "train-labels": rng.integers(0, 10, 60).astype(np.uint8),
        "t10k-images": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "t10k-labels": rng.integers(0, 10, 20).astype(np.uint8),
    }


class Server:
    """A local HTTP server: ``files`` name -> bytes, ``faults`` name -> list of faults to play
    on successive requests ("corrupt", "truncate", 404, 500, "slow", or ("trickle", seconds):
    one byte every that many seconds), ``requests`` counted."""

    def __init__(self):
        self.files, self.faults, self.requests = {}, {}, {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 -- the http.server API
                name = self.path.rsplit("/", 1)[-1]
                server.requests[name] = server.requests.get(name, 0) + 1
                fault = server.faults.get(name, []).pop(0) if server.faults.get(name) else None
                if name not in server.files:
                    fault = 404
                if isinstance(fault, int):
                    self.send_error(fault)
                    return
                body = server.files[name]
                if fault == "corrupt":
                    body = bytes(255 - b for b in body[:16]) + body[16:]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if fault == "truncate":
                    self.wfile.write(body[: len(body) // 2])
                    return  # the connection closes short of Content-Length
                if fault == "slow":  # about a second per file
                    step = max(len(body) // 40, 1)
                    for i in range(0, len(body), step):
                        self.wfile.write(body[i : i + step])
                        self.wfile.flush()
                        time.sleep(0.025)
                    return
                if isinstance(fault, tuple) and fault[0] == "trickle":
                    try:  # until the body is sent or the client hangs up
                        for i in range(len(body)):
                            self.wfile.write(body[i : i + 1])
                            self.wfile.flush()
                            time.sleep(fault[1])
                    except OSError:
                        pass
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        serve = lambda: self.httpd.serve_forever(poll_interval=0.02)  # noqa: E731
        threading.Thread(target=serve, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def serve(arrays: dict[str, np.ndarray], tmp_path: Path, monkeypatch) -> Server:
    """A server holding fashion_mnist's four files, and the registry pointing at them (no TFDS
    copy anywhere, not offline, retries without the real back-off)."""
    srv = Server()
    lines = []
    for name in FILES:
        body = data.write_idx(tmp_path / "x.gz", arrays[name.split("-idx")[0]]).read_bytes()
        srv.files[name] = body
        sha = hashlib.sha256(body).hexdigest()
        lines.append(f"{srv.url}/fashion_mnist/{name}\t{len(body)}\t{sha}\t{name}")
    registry = tmp_path / "registry"
    registry.mkdir()
    (registry / "fashion_mnist.txt").write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("JAXNOTES_CHECKSUMS_DIR", str(registry))
    monkeypatch.delenv("JAXNOTES_OFFLINE", raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no-tfds"))  # no prepared copy anywhere
    monkeypatch.setattr(download, "BACKOFF", 0.01)
    return srv


def book_folder() -> Path:
    """Where fashion_mnist's downloaded and decoded files go ($JAXNOTES_DATA_DIR/fashion_mnist)."""
    return Path(os.environ["JAXNOTES_DATA_DIR"]) / "fashion_mnist"
