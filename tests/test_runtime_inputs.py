"""Input files for `predict`: .npy arrays, and images through Pillow or the built-in PNG and
PGM/PPM decoders (used where Pillow is not installed, e.g. a minimal edge install)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from supermask.errors import InputError
from supermask.runtime.inputs import decode_png, decode_pnm, read_input


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def encode_png(img: np.ndarray, filters=(0, 1, 2, 3, 4), color: int | None = None, palette=None) -> bytes:
    """A small PNG writer (8-bit) that applies the given row filters in turn, so the decoder's
    handling of every filter type is tested against data made independently of it."""
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


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("filt", [0, 1, 2, 3, 4])
def test_builtin_png_decoder_undoes_every_filter(channels, filt):
    g = np.random.default_rng(channels * 10 + filt)
    shape = (9, 7) if channels == 1 else (9, 7, channels)
    img = g.integers(0, 256, shape, dtype=np.uint8)
    got = decode_png(encode_png(img, filters=(filt, 0, filt)))
    np.testing.assert_array_equal(got, img)


def test_builtin_png_decoder_reads_palette_images():
    pal = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], np.uint8)
    idx = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    got = decode_png(encode_png(idx, color=3, palette=pal))
    np.testing.assert_array_equal(got, pal[idx])


def test_builtin_png_decoder_agrees_with_pillow(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    g = np.random.default_rng(0)
    ramp = np.add.outer(np.arange(28), np.arange(28)).astype(np.uint8) * 4
    for mode, arr in (("L", ramp), ("RGB", g.integers(0, 256, (28, 28, 3), dtype=np.uint8))):
        Image.fromarray(arr, mode).save(tmp_path / f"{mode}.png")
        np.testing.assert_array_equal(decode_png((tmp_path / f"{mode}.png").read_bytes()), arr)


def test_builtin_png_decoder_rejects_bad_files():
    img = np.zeros((4, 4), np.uint8)
    good = encode_png(img)
    with pytest.raises(ValueError):
        decode_png(b"GIF89a" + good[6:])
    with pytest.raises((ValueError, zlib.error)):
        decode_png(good[:40])
    ihdr = struct.pack(">IIBBBBB", 4, 4, 8, 0, 0, 0, 0)
    bad_depth = good.replace(ihdr, struct.pack(">IIBBBBB", 4, 4, 16, 0, 0, 0, 0))
    with pytest.raises(ValueError, match="bit depth 16"):
        decode_png(bad_depth)
    empty_palette = encode_png(img, color=3, palette=np.zeros((0, 3), np.uint8))
    with pytest.raises(ValueError, match="bad PNG palette"):
        decode_png(empty_palette)


def test_pnm_decoder():
    img = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(decode_pnm(b"P5\n# comment\n4 3\n255\n" + img.tobytes()), img)
    rgb = np.arange(36, dtype=np.uint8).reshape(3, 4, 3)
    np.testing.assert_array_equal(decode_pnm(b"P6 4 3 255\n" + rgb.tobytes()), rgb)
    with pytest.raises(ValueError, match="truncated"):
        decode_pnm(b"P5 4 3 255\n" + img.tobytes()[:5])


def test_read_input_without_pillow(tmp_path, monkeypatch):
    _without_pillow(monkeypatch)
    img = np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8)
    (tmp_path / "a.png").write_bytes(encode_png(img))
    np.testing.assert_array_equal(read_input(tmp_path / "a.png", (1, 28, 28)), img[None, None])
    (tmp_path / "a.pgm").write_bytes(b"P5 28 28 255\n" + img.tobytes())
    np.testing.assert_array_equal(read_input(tmp_path / "a.pgm", (1, 28, 28)), img[None, None])
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(InputError, match="without Pillow"):
        read_input(tmp_path / "a.jpg", (1, 28, 28))


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


def test_read_input_npy_and_errors(tmp_path):
    a = np.random.default_rng(3).random((5, 1, 28, 28)).astype(np.float64)
    np.save(tmp_path / "a.npy", a)
    got = read_input(tmp_path / "a.npy", (1, 28, 28))
    assert got.dtype == np.float32 and got.shape == (5, 1, 28, 28)
    np.save(tmp_path / "obj.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="not a readable .npy"):
        read_input(tmp_path / "obj.npy", (1, 28, 28))
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(InputError, match="not a readable .npy"):
        read_input(tmp_path / "junk.npy", (1, 28, 28))
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
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(InputError, match="cannot read image"):
        read_input(tmp_path / "bad.png", (1, 28, 28))


# ------------------------------------------------------------ size checks and bounded work


def _png_chunks(width, height, idat: bytes, color=0) -> bytes:
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


class _ZlibSpy:
    """Stands in for the zlib module inside runtime.inputs: records how many bytes each
    decompression call produced (and, with ``forbid``, fails on any call)."""

    error = zlib.error

    def __init__(self, forbid=False):
        self.forbid, self.outputs = forbid, []

    def _check(self):
        if self.forbid:
            raise AssertionError("decompression was attempted")

    def decompress(self, data, *args, **kwargs):
        self._check()
        out = zlib.decompress(data, *args, **kwargs)
        self.outputs.append(len(out))
        return out

    def decompressobj(self, *args, **kwargs):
        self._check()
        real, spy = zlib.decompressobj(*args, **kwargs), self

        class Obj:
            def decompress(self, data, max_length=0):
                out = real.decompress(data, max_length)
                spy.outputs.append(len(out))
                return out

            def __getattr__(self, name):
                return getattr(real, name)

        return Obj()


def _without_pillow(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pil(name, *args, **kwargs):
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError("no Pillow here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pil)


@pytest.mark.parametrize("pillow", [False, True])
def test_image_size_is_checked_from_the_header_before_decompressing(tmp_path, monkeypatch, pillow):
    # A tiny file that declares a 20000 x 20000 image (400 MB of pixels) must be refused from
    # its header, for the model's 28x28 input, without inflating anything.
    from supermask.runtime import inputs

    if pillow:
        pytest.importorskip("PIL.Image")
    else:
        _without_pillow(monkeypatch)
    spy = _ZlibSpy(forbid=True)
    monkeypatch.setattr(inputs, "zlib", spy)
    (tmp_path / "huge.png").write_bytes(_png_chunks(20000, 20000, zlib.compress(b"\0" * 1000)))
    with pytest.raises(InputError, match=r"huge.png: image is 20000x20000 pixels; the model expects 28x28"):
        read_input(tmp_path / "huge.png", (1, 28, 28))
    (tmp_path / "huge.pgm").write_bytes(b"P5 20000 20000 255\n" + b"\0" * 100)
    with pytest.raises(InputError, match=r"image is 20000x20000 pixels; the model expects 28x28"):
        read_input(tmp_path / "huge.pgm", (1, 28, 28))
    assert spy.outputs == []


def test_decode_png_checks_the_expected_size_first(monkeypatch):
    from supermask.runtime import inputs

    img = np.random.default_rng(5).integers(0, 256, (28, 28), dtype=np.uint8)
    data = encode_png(img)
    np.testing.assert_array_equal(decode_png(data, size=(28, 28)), img)
    monkeypatch.setattr(inputs, "zlib", _ZlibSpy(forbid=True))
    with pytest.raises(inputs.ImageSizeError, match="image is 28x28 pixels; expected 32x28"):
        decode_png(data, size=(32, 28))
    with pytest.raises(inputs.ImageSizeError):
        decode_pnm(b"P5 28 28 255\n" + img.tobytes(), size=(28, 27))


def test_png_decompression_is_bounded_by_the_header(monkeypatch):
    # A "zlib bomb": a 28x28 header over a stream that inflates to 50 MB. The decoder must stop
    # at the header's byte count (28 rows of 1 + 28 bytes) and refuse the file.
    from supermask.runtime import inputs

    spy = _ZlibSpy()
    monkeypatch.setattr(inputs, "zlib", spy)
    bomb = _png_chunks(28, 28, zlib.compress(b"\0" * 50_000_000, 9))
    assert len(bomb) < 100_000
    with pytest.raises(ValueError, match="longer than its 28x28 header"):
        decode_png(bomb)
    assert spy.outputs and max(spy.outputs) <= 28 * 29
    with pytest.raises(ValueError, match="shorter than its 28x28 header"):
        decode_png(_png_chunks(28, 28, zlib.compress(b"\0" * (28 * 29 - 1))))
    # exactly the declared size (with a zlib trailer still to read) is fine
    np.testing.assert_array_equal(decode_png(_png_chunks(28, 28, zlib.compress(b"\0" * 28 * 29))),
                                  np.zeros((28, 28), np.uint8))


def test_builtin_png_decoder_large_image_every_filter():
    # Bigger than the per-filter test above, with rows of every filter mixed, several
    # channel counts and odd widths: the vectorised Sub/Up and the per-byte Average/Paeth paths.
    g = np.random.default_rng(11)
    for shape in ((40, 33), (21, 35, 3), (17, 29, 4), (3, 1, 2)):
        img = g.integers(0, 256, shape, dtype=np.uint8)
        np.testing.assert_array_equal(decode_png(encode_png(img, filters=(1, 4, 2, 3, 1, 1, 0, 4, 3, 2))), img)
