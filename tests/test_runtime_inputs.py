"""Input files for `predict`: .npy arrays (header checked before anything is allocated, never
a pickle) and images read through Pillow (a clear error when it is not installed)."""

from __future__ import annotations

import io
import resource
import struct
import sys
import zlib

import numpy as np
import pytest

from supermask.errors import InputError, RuntimeUnavailableError, SupermaskError
from supermask.runtime.inputs import read_image, read_input, read_npy

try:
    from PIL import Image
except ImportError:  # the [images] extra is not installed: only the tests of that case run
    Image = None
needs_pillow = pytest.mark.skipif(Image is None, reason="Pillow is not installed (the [images] extra)")


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def encode_png(img: np.ndarray, filters=(0, 1, 2, 3, 4), color: int | None = None, palette=None) -> bytes:
    """A small PNG writer (8-bit) that applies the given row filters in turn: PNG files made
    independently of Pillow, for the tests of reading them (here and in other test files)."""
    h, w = img.shape[:2]
    c = 1 if img.ndim == 2 else img.shape[2]
    color = color if color is not None else {1: 0, 2: 4, 3: 2, 4: 6}[c]
    raw = img.reshape(h, w * c).astype(np.int64)
    out = bytearray()
    prev = np.zeros(w * c, np.int64)
    for y in range(h):
        f = filters[y % len(filters)]
        cur = raw[y]
        res = []
        for i in range(w * c):
            a = int(cur[i - c]) if i >= c else 0
            b = int(prev[i])
            cc = int(prev[i - c]) if i >= c else 0
            pred = [0, a, b, (a + b) >> 1, _paeth(a, b, cc)][f]
            res.append((int(cur[i]) - pred) & 0xFF)
        out += bytes([f]) + bytes(res)
        prev = cur

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
    if palette is not None:
        data += chunk(b"PLTE", palette.astype(np.uint8).tobytes())
    return data + chunk(b"IDAT", zlib.compress(bytes(out))) + chunk(b"IEND", b"")


def png_file(width, height, idat: bytes, color=0, depth=8) -> bytes:
    """A PNG of the given header and compressed image data (IDAT), valid checksums."""

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _without_pillow(monkeypatch):
    """Make `import PIL` (and its submodules) fail, as on an install without the [images] extra."""
    for name in [m for m in sys.modules if m == "PIL" or m.startswith("PIL.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)


def _forbid_decoding(monkeypatch):
    """Fail the test if Pillow decodes any pixel data."""
    from PIL import ImageFile

    def load(self):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


# ------------------------------------------------------------------------------- images


@needs_pillow
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png_of_every_colour_type_and_row_filter(tmp_path, channels):
    g = np.random.default_rng(channels)
    img = g.integers(0, 256, (28, 28) if channels == 1 else (28, 28, channels), dtype=np.uint8)
    (tmp_path / "a.png").write_bytes(encode_png(img, filters=(1, 4, 2, 3, 1, 0, 4, 3, 2)))
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), img)
    want = img if channels == 1 else img[:, :, 0] if channels == 2 else None
    if want is not None:  # grey (with its alpha dropped) for a one-channel model
        np.testing.assert_array_equal(read_input(tmp_path / "a.png", (1, 28, 28)), want[None, None])


@needs_pillow
def test_palette_bilevel_and_cmyk_images(tmp_path):
    pal = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], np.uint8)
    idx = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    (tmp_path / "p.png").write_bytes(encode_png(idx, color=3, palette=pal))
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), pal[idx])
    bits = np.random.default_rng(0).random((28, 28)) < 0.5
    Image.fromarray(bits).save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_input(tmp_path / "b.png", (1, 28, 28))[0, 0], bits * 255.0)
    rgb = np.random.default_rng(1).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.tif")
    got = read_input(tmp_path / "c.tif", (3, 28, 28))
    np.testing.assert_array_equal(got[0], np.asarray(Image.fromarray(rgb).convert("CMYK").convert("RGB"))
                                  .transpose(2, 0, 1))


@needs_pillow
@pytest.mark.parametrize("suffix", [".bmp", ".gif", ".tiff", ".webp", ".tga", ".pgm", ".ppm"])
def test_formats_pillow_reads(tmp_path, suffix):
    # Lossless formats round-trip exactly; .tga is not in the built-in suffix list: any
    # extension Pillow registers is read as an image.
    if suffix == ".webp" and not Image.registered_extensions().get(".webp"):
        pytest.skip("this Pillow has no WebP support")
    grey = np.random.default_rng(2).integers(0, 256, (28, 28), dtype=np.uint8)
    kwargs = {"lossless": True} if suffix == ".webp" else {}
    if suffix == ".ppm":
        Image.fromarray(np.stack([grey] * 3, axis=2)).save(tmp_path / f"a{suffix}")
    else:
        Image.fromarray(grey).save(tmp_path / f"a{suffix}", **kwargs)
    np.testing.assert_array_equal(read_input(tmp_path / f"a{suffix}", (1, 28, 28)), grey[None, None])


@needs_pillow
def test_jpeg_and_hand_written_pgm(tmp_path):
    img = np.add.outer(np.arange(28), np.arange(28)).astype(np.uint8) * 4  # smooth: JPEG keeps it close
    Image.fromarray(img).save(tmp_path / "a.jpg", quality=95)
    got = read_input(tmp_path / "a.jpg", (1, 28, 28))
    assert got.shape == (1, 1, 28, 28) and np.abs(got[0, 0] - img.astype(np.float32)).max() <= 8
    (tmp_path / "a.pgm").write_bytes(b"P5\n# comment\n28 28\n255\n" + img.tobytes())
    np.testing.assert_array_equal(read_input(tmp_path / "a.pgm", (1, 28, 28)), img[None, None])
    (tmp_path / "t.pgm").write_bytes(b"P5 28 28 255\n" + img.tobytes()[:100])
    with pytest.raises(InputError, match="t.pgm: cannot read image: .*truncated"):
        read_input(tmp_path / "t.pgm", (1, 28, 28))


@needs_pillow
def test_read_input_converts_channels_and_checks_size(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    (tmp_path / "rgb.png").write_bytes(encode_png(rgb))
    grey = read_input(tmp_path / "rgb.png", (1, 28, 28))
    want = np.rint(rgb.astype(np.float64) @ [0.299, 0.587, 0.114]).clip(0, 255).astype(np.uint8)
    np.testing.assert_array_equal(grey[0, 0], want)
    np.testing.assert_array_equal(read_input(tmp_path / "rgb.png", (3, 28, 28))[0], rgb.transpose(2, 0, 1))
    grey_img = rgb[:, :, 0]
    (tmp_path / "g.png").write_bytes(encode_png(grey_img))
    np.testing.assert_array_equal(read_input(tmp_path / "g.png", (3, 28, 28))[0], np.stack([grey_img] * 3))
    with pytest.raises(InputError, match="expects 32x32"):
        read_input(tmp_path / "g.png", (3, 32, 32))
    with pytest.raises(InputError, match="not images"):
        read_input(tmp_path / "g.png", (784,))


@needs_pillow
def test_deep_images_are_refused_not_clipped(tmp_path):
    # 16-bit values do not fit the uint8 pixels a model is trained on; converting would clip them.
    (tmp_path / "d.png").write_bytes(png_file(28, 28, zlib.compress(b"\0" * 28 * 57), depth=16))
    with pytest.raises(InputError, match=r"d.png: a I;16\w? \(16-bit or floating-point\) image"):
        read_input(tmp_path / "d.png", (1, 28, 28))


@needs_pillow
def test_bad_image_files(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(InputError, match="bad.png: cannot read image"):
        read_input(tmp_path / "bad.png", (1, 28, 28))
    (tmp_path / "short.png").write_bytes(png_file(28, 28, zlib.compress(b"\0" * 100)))
    with pytest.raises(InputError, match="short.png: cannot read image"):
        read_input(tmp_path / "short.png", (1, 28, 28))
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(InputError, match="x.jpg: cannot read image"):
        read_input(tmp_path / "x.jpg", (1, 28, 28))
    # EPS is left out: Pillow renders it by running Ghostscript
    (tmp_path / "a.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\n")
    with pytest.raises(InputError, match="cannot read image"):
        read_input(tmp_path / "a.png", (1, 28, 28))


def test_without_pillow_images_fail_with_the_install_command(tmp_path, monkeypatch):
    img = np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8)
    (tmp_path / "a.png").write_bytes(encode_png(img))
    np.save(tmp_path / "a.npy", img)
    _without_pillow(monkeypatch)
    with pytest.raises(RuntimeUnavailableError) as e:
        read_input(tmp_path / "a.png", (1, 28, 28))
    msg = str(e.value)
    assert isinstance(e.value, SupermaskError) and "\n" not in msg
    assert msg.startswith(f"{tmp_path / 'a.png'}: reading images needs Pillow") and 'pip install "supermask[images]"' in msg
    np.testing.assert_array_equal(read_input(tmp_path / "a.npy", (1, 28, 28)), img[None, None])  # .npy needs none
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(RuntimeUnavailableError, match="needs Pillow"):
        read_input(tmp_path / "b.jpg", (1, 28, 28))


# ------------------------------------------------------------ size checks and bounded work


@needs_pillow
def test_image_size_is_checked_from_the_header_before_decoding(tmp_path, monkeypatch):
    # A tiny file that declares a 9000 x 9000 image (81 MB of pixels) is refused from its
    # header for the model's 28x28 input, without decoding anything.
    _forbid_decoding(monkeypatch)
    (tmp_path / "huge.png").write_bytes(png_file(9000, 9000, zlib.compress(b"\0" * 1000)))
    with pytest.raises(InputError, match=r"huge.png: image is 9000x9000 pixels; the model expects 28x28"):
        read_input(tmp_path / "huge.png", (1, 28, 28))
    (tmp_path / "huge.pgm").write_bytes(b"P5 9000 9000 255\n" + b"\0" * 100)
    with pytest.raises(InputError, match=r"image is 9000x9000 pixels; the model expects 28x28"):
        read_input(tmp_path / "huge.pgm", (1, 28, 28))


@needs_pillow
def test_decompression_bomb_header_is_refused(tmp_path, monkeypatch):
    _forbid_decoding(monkeypatch)
    (tmp_path / "bomb.png").write_bytes(png_file(30000, 30000, zlib.compress(b"\0" * 100)))
    with pytest.raises(InputError, match=r"bomb.png: image refused as far too large .*the model expects 28x28"):
        read_input(tmp_path / "bomb.png", (1, 28, 28))


@needs_pillow
def test_png_decompression_is_bounded_by_the_header(tmp_path):
    # A "zlib bomb": a 28x28 header over a stream that inflates to 200 MB. Only the pixels the
    # header declares are inflated: the process does not grow by anything like 200 MB.
    comp = zlib.compressobj(9)
    stream = b"".join(comp.compress(b"\0" * (1 << 20)) for _ in range(200)) + comp.flush()
    (tmp_path / "zbomb.png").write_bytes(png_file(28, 28, stream))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    got = read_input(tmp_path / "zbomb.png", (1, 28, 28))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024  # ru_maxrss is in KiB
    np.testing.assert_array_equal(got, np.zeros((1, 1, 28, 28), np.float32))
    assert grown_mb < 50, grown_mb


# --------------------------------------------------------------------------------- .npy


def _npy_header(shape, descr="<f4", version=(1, 0)) -> bytes:
    f = io.BytesIO()
    write = {(1, 0): np.lib.format.write_array_header_1_0, (2, 0): np.lib.format.write_array_header_2_0}[version]
    write(f, {"descr": descr, "fortran_order": False, "shape": tuple(shape)})
    return f.getvalue()


def test_read_input_npy_and_errors(tmp_path):
    a = np.random.default_rng(3).random((5, 1, 28, 28)).astype(np.float64)
    np.save(tmp_path / "a.npy", a)
    got = read_input(tmp_path / "a.npy", (1, 28, 28))
    assert got.dtype == np.float32 and got.shape == (5, 1, 28, 28)
    np.save(tmp_path / "wrong.npy", np.zeros((2, 3, 28, 28), np.uint8))
    with pytest.raises(InputError, match="wrong.npy: input has shape"):
        read_input(tmp_path / "wrong.npy", (1, 28, 28))
    with pytest.raises(InputError, match="no such file"):
        read_input(tmp_path / "missing.png", (1, 28, 28))
    with pytest.raises(InputError, match="is a folder"):
        read_input(tmp_path, (1, 28, 28))
    (tmp_path / "x.csv").write_text("1,2,3")
    with pytest.raises(InputError, match="unknown input type '.csv'"):
        read_input(tmp_path / "x.csv", (1, 28, 28))


def test_npy_versions_and_layouts_are_read(tmp_path):
    a = np.random.default_rng(4).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    with open(tmp_path / "v2.npy", "wb") as f:
        np.lib.format.write_array(f, a, version=(2, 0))
    np.testing.assert_array_equal(read_npy(tmp_path / "v2.npy"), a)
    np.save(tmp_path / "f.npy", np.asfortranarray(a))
    np.testing.assert_array_equal(read_input(tmp_path / "f.npy", (1, 28, 28))[:, 0], a)
    np.save(tmp_path / "big-endian.npy", a.astype(">f4"))
    np.testing.assert_array_equal(read_input(tmp_path / "big-endian.npy", (1, 28, 28))[:, 0], a)


@pytest.mark.parametrize("data, why", [
    (b"", "the file is empty"),
    (b"\x93", r"it is truncated \(1 byte,"),
    (b"\x93NUMPY\x01", r"it is truncated \(7 bytes,"),
    (b"x", r"it does not start with the .npy signature \(1 byte\)"),
    (b"PK\x03\x04 a zip", r"it does not start with the .npy signature \(10 bytes; a .npz archive\?"),
    (b"\x93NUMPY garbage", "format version 32.103 is not supported"),
    (b"\x93NUMPY\x01\x00\x76\x00{'descr'", "its header is truncated"),
    (b"\x93NUMPY\x01\x00\x10\x00{'descr': 1}    \n", "bad header"),
])
def test_bad_npy_files_say_what_is_wrong(tmp_path, data, why):
    # A 1-byte file used to be reported as "pickled (object) data" (numpy's reading of any
    # file without the .npy signature); each gets its true reason now.
    (tmp_path / "a.npy").write_bytes(data)
    with pytest.raises(InputError, match=f"a.npy: not a valid .npy file: {why}") as e:
        read_input(tmp_path / "a.npy", (1, 28, 28))
    assert "pickle" not in str(e.value)


def test_object_arrays_are_never_unpickled(tmp_path, monkeypatch):
    import pickle

    np.save(tmp_path / "obj.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("pickle.load was called"))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("pickle.loads was called"))
    with pytest.raises(InputError, match="obj.npy: the array holds Python objects"):
        read_input(tmp_path / "obj.npy", (1, 28, 28))


def test_npy_header_claiming_more_data_than_the_file_holds(tmp_path, monkeypatch):
    # A 193-byte-style file whose header declares (100000000, 1, 28, 28) float32 (292 GiB):
    # refused from its header, naming both sizes, before any array is allocated.
    data = _npy_header((100_000_000, 1, 28, 28)) + b"\0" * 65
    (tmp_path / "huge.npy").write_bytes(data)
    monkeypatch.setattr(np.lib.format, "read_array", lambda *a, **k: pytest.fail("the array was read"))
    with pytest.raises(InputError) as e:
        read_input(tmp_path / "huge.npy", (1, 28, 28))
    msg = str(e.value)
    assert "huge.npy: the header declares shape (100000000, 1, 28, 28) of float32" in msg
    assert "313,600,000,000 bytes" in msg and "holds only 65 bytes" in msg
    monkeypatch.undo()
    # a truncated batch: one byte short of its declared data
    (tmp_path / "short.npy").write_bytes(_npy_header((2, 1, 28, 28), "|u1", (2, 0)) + b"\0" * (2 * 784 - 1))
    with pytest.raises(InputError, match=r"declares shape \(2, 1, 28, 28\) of uint8 \(1,568 bytes of data\), "
                                         r"but the file holds only 1,567 bytes"):
        read_input(tmp_path / "short.npy", (1, 28, 28))
    (tmp_path / "ok.npy").write_bytes(_npy_header((2, 1, 28, 28), "|u1") + b"\7" * (2 * 784))
    np.testing.assert_array_equal(read_input(tmp_path / "ok.npy", (1, 28, 28)), np.full((2, 1, 28, 28), 7.0))
