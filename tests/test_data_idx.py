"""IDX reading and the idx:<dir> source, against files written by hand with struct and gzip."""

import gzip
import struct

import numpy as np
import pytest

from jaxnotes.data import load, read_idx, write_idx


def idx_bytes(array: np.ndarray, code: int) -> bytes:
    """IDX encoding written independently of jaxnotes: magic, big-endian dims, big-endian data."""
    header = bytes([0, 0, code, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    big_endian = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    return header + array.astype(big_endian[code]).tobytes()


def write_mnist_dir(directory, n_train=7, n_test=5, gz=False, h=4, w=3, seed=0):
    """Four MNIST-named IDX files of random uint8 images and labels; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, h, w), dtype=np.uint8)
        labels = rng.integers(0, 10, size=(n,), dtype=np.uint8)
        for kind, array, ndim in (("images", images, 3), ("labels", labels, 1)):
            data = idx_bytes(array, 0x08)
            name = f"{prefix}-{kind}-idx{ndim}-ubyte"
            if gz:
                (directory / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (directory / name).write_bytes(data)
        arrays[prefix] = (images, labels)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_idx_dir_loads_both_splits(tmp_path, gz):
    written = write_mnist_dir(tmp_path, gz=gz)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ds = load(f"idx:{tmp_path}", split)
        images, labels = written[prefix]
        assert ds.images.shape == (*images.shape, 1) and ds.images.dtype == np.uint8
        np.testing.assert_array_equal(ds.images[..., 0], images)
        assert ds.labels.dtype == np.int32
        np.testing.assert_array_equal(ds.labels, labels)
        all_labels = np.concatenate([written["train"][1], written["t10k"][1]])
        assert ds.num_classes == all_labels.max() + 1
        assert len(ds) == len(labels)


@pytest.mark.parametrize(
    "dtype,code",
    [("u1", 0x08), ("i1", 0x09), ("i2", 0x0B), ("i4", 0x0C), ("f4", 0x0D), ("f8", 0x0E)],
)
def test_read_idx_all_dtypes(tmp_path, dtype, code):
    rng = np.random.default_rng(1)
    low = 0 if dtype == "u1" else -60  # values every IDX dtype can hold exactly
    array = rng.integers(low, 120, size=(3, 5, 2)).astype(dtype)
    if dtype.startswith("f"):
        array = array / np.asarray(7, dtype)  # non-integer floats
    path = tmp_path / "x.idx"
    path.write_bytes(idx_bytes(array, code))
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_write_idx_matches_hand_encoding(tmp_path):
    array = np.arange(24, dtype=np.int16).reshape(2, 3, 4) - 7
    raw = write_idx(tmp_path / "a-idx3", array)
    assert raw.read_bytes() == idx_bytes(array, 0x0B)
    gz = write_idx(tmp_path / "a-idx3.gz", array)
    assert gzip.decompress(gz.read_bytes()) == idx_bytes(array, 0x0B)
    np.testing.assert_array_equal(read_idx(gz), array)
    with pytest.raises(ValueError, match="int64"):
        write_idx(tmp_path / "b", np.zeros(3, np.int64))


def test_truncated_raw_file_names_the_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(np.zeros((10, 4, 4), np.uint8), 0x08)[:-5])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*truncated"):
        read_idx(path)


def test_trailing_bytes_rejected(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(np.zeros(10, np.uint8), 0x08) + b"\x00")
    with pytest.raises(ValueError, match="labels.*trailing"):
        read_idx(path)


def test_truncated_gzip_names_the_file(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    data = gzip.compress(idx_bytes(np.arange(600, dtype=np.uint8).reshape(6, 10, 10), 0x08))
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz"):
        read_idx(path)


def test_gzip_of_truncated_idx_names_the_file(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(9, np.uint8), 0x08)[:-1]))
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz.*truncated"):
        read_idx(path)


def test_wrong_magic(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x00\x01\x08\x01" + struct.pack(">I", 2) + b"\x01\x02")
    with pytest.raises(ValueError, match="bad.*magic"):
        read_idx(path)


def test_wrong_dtype_code(tmp_path):
    path = tmp_path / "weird"
    path.write_bytes(b"\x00\x00\x0a\x01" + struct.pack(">I", 2) + b"\x01\x02")
    with pytest.raises(ValueError, match="weird.*dtype code 0x0A"):
        read_idx(path)


def test_short_header(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">I", 2))  # 3 dims declared, 1 given
    with pytest.raises(ValueError, match="short.*header"):
        read_idx(path)


def test_count_mismatch_between_images_and_labels(tmp_path):
    write_mnist_dir(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(6, np.uint8), 0x08))
    with pytest.raises(ValueError, match="7 images.*train-labels-idx1-ubyte.*6 labels"):
        load(f"idx:{tmp_path}", "train")


def test_images_with_wrong_dtype_rejected(tmp_path):
    write_mnist_dir(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(
        idx_bytes(np.zeros((5, 4, 3), np.int32), 0x0C)
    )
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.*uint8"):
        load(f"idx:{tmp_path}", "test")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(f"idx:{tmp_path / 'nowhere'}", "train")
    write_mnist_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load(f"idx:{tmp_path}", "test")
