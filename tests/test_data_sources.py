"""Sources: digits, the TFDS route (real TFDS code, mocked data), its clear error, synthetic."""

import subprocess
import sys

import numpy as np
import pytest

from jaxnotes.data import DatasetUnavailableError, load

# --- digits -------------------------------------------------------------------------------------


def test_digits_sizes_values_and_stratification():
    from sklearn.datasets import load_digits

    reference = load_digits()
    train, test = load("digits", "train"), load("digits", "test")
    assert (len(train), len(test)) == (1257, 540)
    for ds in (train, test):
        assert ds.images.shape[1:] == (8, 8, 1) and ds.images.dtype == np.float32
        assert ds.labels.dtype == np.int32 and ds.num_classes == 10 and ds.name == "digits"
        assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
    # Together the two splits are exactly the 1,797 scikit-learn images (as multisets of rows).
    ours = np.concatenate([train.images, test.images]).reshape(-1, 64) * 16
    theirs = reference.images.reshape(-1, 64)
    assert ours.shape == theirs.shape
    ours_rows = sorted(map(tuple, np.round(ours).astype(int)))
    assert ours_rows == sorted(map(tuple, theirs.astype(int)))
    # Stratified: each class's share in the test split is its overall share, within one example.
    overall = np.bincount(reference.target, minlength=10)
    test_counts = np.bincount(test.labels, minlength=10)
    assert np.all(np.abs(test_counts - 0.3 * overall) <= 1)
    np.testing.assert_array_equal(np.bincount(train.labels, minlength=10) + test_counts, overall)


def test_digits_equal_scikit_learns_loader_and_split_without_importing_it():
    # The fast path reads the packaged table and the stored split; the reference is
    # scikit-learn's own load_digits and train_test_split, run in a fresh interpreter so the
    # "no scikit-learn import" claim is checked too.
    import subprocess
    import sys

    script = (
        "import sys, numpy as np; from jaxnotes.data import load\n"
        "tr, te = load('digits', 'train'), load('digits', 'test')\n"
        "assert 'sklearn' not in sys.modules, 'scikit-learn was imported'\n"
        "from sklearn.datasets import load_digits\n"
        "from sklearn.model_selection import train_test_split\n"
        "b = load_digits(); idx = np.arange(len(b.target))\n"
        "a, t = train_test_split(idx, test_size=0.3, stratify=b.target, random_state=0)\n"
        "for ds, ids in ((tr, np.sort(a)), (te, np.sort(t))):\n"
        "    np.testing.assert_array_equal(ds.images[..., 0], b.images[ids] / 16.0)\n"
        "    np.testing.assert_array_equal(ds.labels, b.target[ids])\n"
        "print('same')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.strip() == "same", done.stderr[-2000:]


def test_digits_split_is_fixed():
    a, b = load("digits", "test"), load("digits", "test")
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_bad_name_and_split_list_the_valid_ones():
    with pytest.raises(ValueError, match="digits.*fashion_mnist.*mnist.*idx:<dir>"):
        load("cifar10", "train")
    with pytest.raises(ValueError, match="train, test"):
        load("digits", "validation")
    with pytest.raises(ValueError, match="synthetic"):
        load("synthetic:28x28", "train")


def test_synthetic_is_seeded_and_shaped():
    a = load("synthetic:6x5x3:40", "train")
    assert a.images.shape == (40, 6, 5, 3) and a.images.dtype == np.uint8
    assert a.labels.shape == (40,) and a.labels.dtype == np.int32 and a.num_classes == 10
    np.testing.assert_array_equal(a.images, load("synthetic:6x5x3:40", "train").images)
    assert not np.array_equal(a.images, load("synthetic:6x5x3:40", "test").images)
    assert len(load("synthetic", "test")) == 10_000


def test_import_is_light():
    """import jaxnotes.data must not import TFDS, grain, scikit-learn or TensorFlow."""
    code = (
        "import sys, jaxnotes.data; "
        "print([m for m in ('tensorflow_datasets', 'grain', 'sklearn', 'tensorflow') "
        "if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- TFDS ---------------------------------------------------------------------------------------


@pytest.fixture
def tfds():
    return pytest.importorskip("tensorflow_datasets")


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist"])
def test_tfds_route_under_mock_data(tfds, name):
    with tfds.testing.mock_data(num_examples=37):
        train = load(name, "train")
        test = load(name, "test")
        again = load(name, "train")
        # Reference: the same records read one at a time through TFDS itself.
        source = tfds.data_source(name, split="train")
        ref_images = np.stack([source[i]["image"] for i in range(len(source))])
        ref_labels = np.array([source[i]["label"] for i in range(len(source))])
    for ds in (train, test):
        assert ds.images.shape == (37, 28, 28, 1) and ds.images.dtype == np.uint8
        assert ds.labels.shape == (37,) and ds.labels.dtype == np.int32
        assert ds.num_classes == 10 and ds.name == name and len(ds.class_names) == 10
        assert ds.labels.min() >= 0 and ds.labels.max() < 10
    np.testing.assert_array_equal(train.images, ref_images)
    np.testing.assert_array_equal(train.labels, ref_labels)
    np.testing.assert_array_equal(train.images, again.images)  # deterministic
    np.testing.assert_array_equal(train.labels, again.labels)


def test_tfds_chunked_read_matches_record_by_record(tfds):
    from jaxnotes.data import load_tfds

    with tfds.testing.mock_data(num_examples=50):
        whole = load_tfds("fashion_mnist", "test", chunk_size=1000)
        chunked = load_tfds("fashion_mnist", "test", chunk_size=7)
    np.testing.assert_array_equal(whole.images, chunked.images)
    np.testing.assert_array_equal(whole.labels, chunked.labels)


def test_decoded_cache_is_used_without_tfds(tfds, tmp_path, monkeypatch):
    with tfds.testing.mock_data(num_examples=12):
        first = load("fashion_mnist", "train", cache_dir=tmp_path)
    assert (tmp_path / "fashion_mnist" / "train.npz").exists()
    # Outside the mock, with TFDS unimportable, the cache alone serves the split.
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    monkeypatch.setenv("JAXNOTES_DATA_DIR", str(tmp_path))
    cached = load("fashion_mnist", "train")
    np.testing.assert_array_equal(first.images, cached.images)
    np.testing.assert_array_equal(first.labels, cached.labels)
    assert cached.num_classes == 10 and cached.class_names[1] == "Trouser"


def assert_clear_error(err: pytest.ExceptionInfo):
    message = str(err.value)
    for way in ("JAXNOTES_DATA_MIRROR", "TFDS_DATA_DIR", "idx:<dir>"):
        assert way in message
    # Raised `from None`: no chained TFDS or download traceback.
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_unprepared_and_offline_raises_one_clear_error(tfds, tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetUnavailableError) as err:
        load("fashion_mnist", "train")  # the suite runs with JAXNOTES_OFFLINE=1
    assert_clear_error(err)
    assert str(tmp_path) in str(err.value) and "JAXNOTES_OFFLINE is set" in str(err.value)
    assert isinstance(err.value, RuntimeError)


def test_unprepared_dataset_with_explicit_data_dir(tfds, tmp_path):
    with pytest.raises(DatasetUnavailableError) as err:
        load("mnist", "test", data_dir=tmp_path / "empty")
    assert_clear_error(err)
    assert "no TFDS-prepared copy either" in str(err.value)


def test_missing_tfds_package_still_gives_the_download_route(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import now fails
    with pytest.raises(DatasetUnavailableError) as err:
        load("fashion_mnist", "test")
    assert_clear_error(err)
    assert "tensorflow_datasets is not installed" in str(err.value)


def test_decode_failure_falls_back_and_names_the_cause(tfds, monkeypatch):
    from jaxnotes.data import sources

    def needs_tensorflow(source, chunk_size):
        raise ImportError("decoding this feature needs tensorflow")

    monkeypatch.setattr(sources, "_materialise", needs_tensorflow)
    with tfds.testing.mock_data(num_examples=3), pytest.raises(DatasetUnavailableError) as err:
        load("fashion_mnist", "train")
    assert_clear_error(err)
    assert "could not be decoded" in str(err.value) and "needs tensorflow" in str(err.value)


def test_the_registry_is_tfds_own_file_read_without_importing_tfds():
    import subprocess

    script = (
        "import sys; from jaxnotes.data import download\n"
        "entries = download.registry('fashion_mnist')\n"
        "assert 'tensorflow_datasets' not in sys.modules\n"
        "print(sorted(e.filename for e in entries), sum(e.size for e in entries))\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "JAXNOTES_CHECKSUMS_DIR"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    # The published Fashion-MNIST files: four, 30,878,645 bytes together.
    assert "'train-images-idx3-ubyte.gz'" in done.stdout and done.stdout.strip().endswith(
        "30878645"
    )
