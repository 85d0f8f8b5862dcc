"""User data sets: a path to a .npz file or an image folder given as the data set name."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from supermask import datasets
from supermask.arch import Preprocess
from supermask.errors import DatasetError

R = np.random.default_rng(0)


def npz(path: Path, compressed: bool = False, **arrays) -> str:
    """Write a .npz data set (defaults: 6 train and 3 test 4x5 uint8 images, labels 0..2)."""
    base = {"x_train": R.integers(0, 256, (6, 4, 5), dtype=np.uint8), "y_train": np.array([0, 1, 2, 0, 1, 2]),
            "x_test": R.integers(0, 256, (3, 4, 5), dtype=np.uint8), "y_test": np.array([2, 1, 0])}
    base.update(arrays)
    (np.savez_compressed if compressed else np.savez)(path, **{k: v for k, v in base.items() if v is not None})
    return str(path)


def fails(name: str, *parts: str, split: str = "train") -> str:
    """Loading ``name`` raises DatasetError whose message holds every one of ``parts``."""
    with pytest.raises(DatasetError) as e:
        datasets.load(name, split)
    msg = str(e.value)
    for p in parts:
        assert p in msg, f"{p!r} not in {msg!r}"
    return msg


# ------------------------------------------------------------------------------- npz


def test_npz_grey_images_get_a_channel_and_default_class_names(tmp_path):
    x_tr = R.integers(0, 256, (6, 4, 5), dtype=np.uint8)
    f = npz(tmp_path / "d.npz", x_train=x_tr, y_test=np.array([4, 1, 0], dtype=np.uint8))
    tr, te = datasets.load(f, "train"), datasets.load(f, "test")
    assert tr.name == f and tr.split == "train" and te.split == "test"
    assert tr.images.shape == (6, 1, 4, 5) and tr.images.dtype == np.uint8 and tr.input_shape == (1, 4, 5)
    np.testing.assert_array_equal(tr.images[:, 0], x_tr)
    assert tr.labels.dtype == np.int64 and te.labels.tolist() == [4, 1, 0]
    # K = largest label over both splits + 1, the same for both splits
    assert tr.classes == te.classes == ("0", "1", "2", "3", "4")
    assert tr.preprocess == Preprocess(1 / 255, (0.0,), (1.0,))
    assert not tr.images.flags.writeable and not tr.labels.flags.writeable


def test_npz_chw_images_and_a_classes_array(tmp_path):
    x_te = R.integers(0, 256, (3, 3, 4, 5), dtype=np.uint8)
    f = npz(tmp_path / "d.npz", True, x_train=R.integers(0, 256, (6, 3, 4, 5), dtype=np.uint8), x_test=x_te,
            classes=np.array(["cat", "dog", "emu", "yak"]))
    ds = datasets.load(f, "test")
    assert ds.images.shape == (3, 3, 4, 5) and ds.input_shape == (3, 4, 5)
    np.testing.assert_array_equal(ds.images, x_te)
    assert ds.classes == ("cat", "dog", "emu", "yak")
    assert ds.preprocess == Preprocess(1 / 255, (0.0,) * 3, (1.0,) * 3)


def test_npz_float_feature_vectors(tmp_path):
    x_tr = R.normal(size=(6, 7))  # float64
    f = npz(tmp_path / "d.npz", x_train=x_tr, x_test=R.normal(size=(3, 7)).astype(np.float16))
    tr, te = datasets.load(f, "train"), datasets.load(f, "test")
    assert tr.images.shape == (6, 7) and tr.input_shape == (7,) and te.input_shape == (7,)
    assert tr.images.dtype == te.images.dtype == np.float32
    np.testing.assert_allclose(tr.images, x_tr, rtol=1e-6)
    assert tr.preprocess == Preprocess(1.0, (0.0,), (1.0,))


def test_npz_float_images(tmp_path):
    f = npz(tmp_path / "d.npz", x_train=R.random((6, 2, 4, 5), dtype=np.float32),
            x_test=R.random((3, 2, 4, 5)))
    ds = datasets.load(f, "test")
    assert ds.images.dtype == np.float32 and ds.images.shape == (3, 2, 4, 5)
    assert ds.preprocess == Preprocess(1.0, (0.0, 0.0), (1.0, 1.0))


def test_path_names_and_unknown_names(tmp_path, monkeypatch):
    assert datasets.is_path_dataset("data.npz") and datasets.is_path_dataset("some/dir")
    assert datasets.is_path_dataset(str(tmp_path))
    assert not datasets.is_path_dataset("imagenet") and not datasets.is_path_dataset("mnist")
    assert not datasets.is_path_dataset("")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mnist").mkdir()  # a registered name wins over a folder of that name
    assert not datasets.is_path_dataset("mnist") and datasets.is_path_dataset("./mnist")
    msg = fails("imagenet", "unknown dataset 'imagenet'", "fashion-mnist", ".npz file", "image folder")
    assert "DIR/train/<class>" in msg


def test_npz_errors_about_the_file(tmp_path):
    fails(str(tmp_path / "nope.npz"), "nope.npz does not exist", ".npz file", "image folder")
    (tmp_path / "text.npz").write_text("hello")
    fails(str(tmp_path / "text.npz"), "text.npz is not a .npz file", "np.savez")
    np.save(tmp_path / "one.npy", np.zeros(3))
    fails(str(tmp_path / "one.npy"), "one.npy is not a .npz file")
    # a zip archive that is not an npz: a bad member
    import zipfile
    with zipfile.ZipFile(tmp_path / "bad.npz", "w") as z:
        for k in datasets._NPZ_ARRAYS:
            z.writestr(k + ".npy", b"garbage")
    fails(str(tmp_path / "bad.npz"), "cannot read", "bad.npz")


def test_npz_missing_arrays_are_named_with_what_the_file_holds(tmp_path):
    f = npz(tmp_path / "d.npz", y_test=None, x_test=None, images=np.zeros(3))
    fails(f, "lacks x_test, y_test", "it holds", "images", "x_train", "y_train")


def test_npz_object_arrays_are_refused_without_unpickling(tmp_path):
    f = npz(tmp_path / "d.npz", classes=np.array(["a", 1, None], dtype=object))
    fails(f, "classes is an object array", "pickle")
    f = npz(tmp_path / "e.npz", x_train=np.empty((6, 4, 5), dtype=object))
    fails(f, "x_train is an object array")


def test_npz_shape_and_dtype_errors(tmp_path):
    fails(npz(tmp_path / "a.npz", x_train=np.zeros(6, np.uint8)), "x_train has shape (6,)", "(N, C, H, W)")
    fails(npz(tmp_path / "b.npz", x_train=np.zeros((6, 1, 1, 2, 2), np.uint8)), "x_train has shape (6, 1, 1, 2, 2)")
    fails(npz(tmp_path / "c.npz", x_test=np.zeros((3, 32, 32, 3), np.uint8), x_train=np.zeros((6, 32, 32, 3))),
          "channels-last", "transpose(0, 3, 1, 2)")
    fails(npz(tmp_path / "d.npz", x_train=np.zeros((6, 4, 5), np.int32)), "x_train has dtype int32", "uint8")
    fails(npz(tmp_path / "e.npz", x_test=np.zeros((3, 4, 5))), "x_train is uint8 but x_test is float64")
    # different sample shapes, raised when loading either split
    for split in datasets.SPLITS:
        fails(npz(tmp_path / "f.npz", x_test=np.zeros((3, 4, 6), np.uint8)), "differ in shape", "(6, 4, 5)",
              "(3, 4, 6)", split=split)


def test_npz_label_errors(tmp_path):
    fails(npz(tmp_path / "a.npz", y_train=np.array([0, 1, 2, 0, 1, 2.0])), "y_train has dtype float64",
          "integer")
    fails(npz(tmp_path / "b.npz", y_test=np.array([True, False, True])), "y_test has dtype bool")
    fails(npz(tmp_path / "c.npz", y_test=np.eye(3, dtype=np.int64)), "y_test has shape (3, 3)", "1-D", "argmax")
    fails(npz(tmp_path / "d.npz", y_train=np.arange(5)), "x_train has 6 samples but y_train has 5 labels")
    # checked for the split that is not loaded, too
    fails(npz(tmp_path / "e.npz", y_test=np.array([2, 1, 7]), classes=np.array(["a", "b", "c"])),
          "y_test has label 7", "0..2", "3 classes")
    fails(npz(tmp_path / "f.npz", y_train=np.array([0, 1, -1, 0, 1, 2]), classes=np.array(["a", "b", "c"])),
          "y_train has label -1", "0..2")
    fails(npz(tmp_path / "g.npz", y_test=np.array([0, -2, 1])), "y_test has label -2", "0..K-1")
    fails(npz(tmp_path / "h.npz", y_test=np.array([0, 10**9, 1])), "largest label is 1000000000")


def test_npz_classes_must_be_unique_strings(tmp_path):
    fails(npz(tmp_path / "a.npz", classes=np.array([1, 2, 3])), "classes has dtype int64", "strings")
    fails(npz(tmp_path / "b.npz", classes=np.array(["a", "b", "a"])), "'a' more than once")
    ds = datasets.load(npz(tmp_path / "c.npz", classes=np.array([b"x", b"y", b"z"])), "train")
    assert ds.classes == ("x", "y", "z")


def test_npz_empty_split_and_non_finite_values(tmp_path):
    fails(npz(tmp_path / "a.npz", x_test=np.zeros((0, 4, 5), np.uint8), y_test=np.zeros(0, np.int64)),
          "x_test is empty", "at least one")
    x = np.zeros((6, 4, 5))
    x[2, 1, 1], x[3, 0, 0] = np.nan, np.inf
    fails(npz(tmp_path / "b.npz", x_train=x, x_test=np.zeros((3, 4, 5))), "x_train holds 2 values that are NaN")
    big = np.full((3, 4, 5), 1e300)  # finite as float64, infinite as float32
    fails(npz(tmp_path / "c.npz", x_train=np.zeros((6, 4, 5)), x_test=big), "x_test holds 60 values", split="test")


def test_a_bad_split_name_still_errors(tmp_path):
    fails(npz(tmp_path / "a.npz"), "unknown split 'validation'", "train, test", split="validation")


# ------------------------------------------------------------------------------- image folders


@pytest.fixture
def Image():
    return pytest.importorskip("PIL.Image")


def save(Image, path: Path, a: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(np.asarray(a, dtype=np.uint8))
    (im.convert(mode) if mode else im).save(path)


def test_image_folder_grey(tmp_path, Image):
    pics = {name: R.integers(0, 256, (4, 6), dtype=np.uint8) for name in ("b1", "a2", "c3")}
    save(Image, tmp_path / "train" / "dog" / "b.png", pics["b1"])
    save(Image, tmp_path / "train" / "dog" / "a.png", pics["a2"])
    save(Image, tmp_path / "train" / "cat" / "z.pgm", pics["c3"])
    save(Image, tmp_path / "test" / "cat" / "x.PNG", pics["a2"])
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "dog" / ".hidden.png").write_bytes(b"macOS metadata")
    ds = datasets.load(str(tmp_path), "train")
    assert ds.name == str(tmp_path) and ds.classes == ("cat", "dog")
    assert ds.images.shape == (3, 1, 4, 6) and ds.images.dtype == np.uint8 and ds.input_shape == (1, 4, 6)
    # classes sorted, files sorted by name within a class
    np.testing.assert_array_equal(ds.images[:, 0], [pics["c3"], pics["a2"], pics["b1"]])
    assert ds.labels.tolist() == [0, 1, 1] and ds.labels.dtype == np.int64
    assert ds.preprocess == Preprocess(1 / 255, (0.0,), (1.0,))
    te = datasets.load(str(tmp_path), "test")
    assert te.classes == ("cat", "dog") and te.labels.tolist() == [0]
    np.testing.assert_array_equal(te.images[0, 0], pics["a2"])


def test_image_folder_rgb_with_palette_and_alpha(tmp_path, Image):
    rgb = R.integers(0, 256, (5, 4, 3), dtype=np.uint8)
    save(Image, tmp_path / "train" / "a" / "1.png", rgb)
    save(Image, tmp_path / "train" / "a" / "2.png", np.dstack([rgb, np.full((5, 4), 9)]))  # RGBA
    save(Image, tmp_path / "test" / "b" / "1.bmp", rgb)
    save(Image, tmp_path / "test" / "b" / "2.gif", rgb, mode="P")
    tr, te = datasets.load(str(tmp_path), "train"), datasets.load(str(tmp_path), "test")
    assert tr.images.shape == (2, 3, 5, 4) and te.images.shape == (2, 3, 5, 4)
    np.testing.assert_array_equal(tr.images[0], rgb.transpose(2, 0, 1))
    np.testing.assert_array_equal(tr.images[1], rgb.transpose(2, 0, 1))  # alpha dropped
    np.testing.assert_array_equal(te.images[0], rgb.transpose(2, 0, 1))
    # a class folder may be missing from one split: the classes are the union
    assert tr.classes == te.classes == ("a", "b") and tr.labels.tolist() == [0, 0] and te.labels.tolist() == [1, 1]
    assert tr.preprocess == Preprocess(1 / 255, (0.0,) * 3, (1.0,) * 3)


def test_image_folder_mixing_grey_and_colour_is_rgb_in_both_splits(tmp_path, Image):
    grey = R.integers(0, 256, (4, 4), dtype=np.uint8)
    save(Image, tmp_path / "train" / "a" / "g.png", grey)
    save(Image, tmp_path / "test" / "a" / "g.png", grey)
    save(Image, tmp_path / "test" / "b" / "c.jpg", R.integers(0, 256, (4, 4, 3)))
    tr = datasets.load(str(tmp_path), "train")  # all-grey split, but the test split has colour
    assert tr.images.shape == (1, 3, 4, 4)
    np.testing.assert_array_equal(tr.images[0], np.stack([grey] * 3))
    assert datasets.load(str(tmp_path), "test").images.shape == (2, 3, 4, 4)


def test_image_folder_sizes_must_agree(tmp_path, Image):
    save(Image, tmp_path / "train" / "a" / "1.png", np.zeros((4, 6)))
    save(Image, tmp_path / "train" / "b" / "2.png", np.zeros((4, 6)))
    save(Image, tmp_path / "train" / "b" / "3.png", np.zeros((5, 6)))
    save(Image, tmp_path / "test" / "a" / "1.png", np.zeros((4, 6)))
    fails(str(tmp_path), str(Path("b", "3.png")), "is 6x5 pixels", "1.png is 6x4", "same size", split="test")
    (tmp_path / "train" / "b" / "3.png").unlink()
    save(Image, tmp_path / "test" / "a" / "1.png", np.zeros((8, 6)))
    fails(str(tmp_path), "train images are 6x4", "test images are 6x8", "same image size")


def test_image_folder_without_images(tmp_path, Image):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "a.txt").write_text("x")
    save(Image, tmp_path / "test" / "cat" / "a.png", np.zeros((2, 2)))
    fails(str(tmp_path), "no images found", str(tmp_path / "train"), "class folders: cat", ".png, .jpg",
          "DIR/train/<class>", split="test")
    (tmp_path / "train" / "cat" / "a.txt").unlink()
    (tmp_path / "train" / "cat").rmdir()
    fails(str(tmp_path), "class folders: none")
    (tmp_path / "train").rmdir()
    fails(str(tmp_path), f"{tmp_path / 'train'} does not exist", ".webp")


def test_image_folder_undecodable_and_deep_files_are_named(tmp_path, Image):
    save(Image, tmp_path / "train" / "a" / "1.png", np.zeros((2, 2)))
    save(Image, tmp_path / "test" / "a" / "1.png", np.zeros((2, 2)))
    (tmp_path / "test" / "a" / "2.jpg").write_bytes(b"not a jpeg at all")
    fails(str(tmp_path), "cannot decode image", str(tmp_path / "test" / "a" / "2.jpg"))
    (tmp_path / "test" / "a" / "2.jpg").unlink()
    # a truncated file: its header is fine, its pixels are not
    good = tmp_path / "train" / "a" / "1.png"
    save(Image, tmp_path / "big.png", R.integers(0, 256, (2, 2)))
    data = (tmp_path / "big.png").read_bytes()
    good.write_bytes(data[:len(data) // 2 + 10])
    fails(str(tmp_path), "cannot decode image", str(good))
    Image.fromarray(np.zeros((2, 2), np.uint16)).save(good)
    fails(str(tmp_path), str(good), "16-bit", "8-bit")


def test_image_folder_without_pillow(tmp_path, monkeypatch):
    (tmp_path / "train" / "a").mkdir(parents=True)
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    fails(str(tmp_path), 'pip install "supermask[images]"', "Pillow", str(tmp_path))
