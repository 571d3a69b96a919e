"""Decode one image file into a uint8 array, refusing whatever cannot be decoded safely.

Every function here is pure with respect to the user's files: files are opened read-only and
nothing is ever written beside them. `decode_file` never raises for a bad file; it returns a
`Decoded` whose ``status`` says what happened, so a folder of a million files cannot be
brought down by one of them.

Conversions (the "normal form" is ``L`` (H, W) or ``RGB`` (H, W, 3) uint8):

- ``I;16`` / ``I;16B`` / ``I`` (16-bit in a 32-bit container): scaled by 255/65535 and rounded,
  so the full 16-bit range maps onto the full 8-bit range (PIL's own ``convert("L")`` clips).
- ``F`` (float): values in [0, 1] are scaled by 255; anything else is min-max stretched.
- ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: converted to RGB by PIL.
- ``P`` with transparency, ``PA``, ``LA``, ``RGBA``, ``La``, ``RGBa``: composited over
  `ALPHA_BACKGROUND` (white, how viewers usually show transparent images).
- ``1``: to ``L`` (0 / 255).
- EXIF orientation is applied (``ImageOps.exif_transpose``), so the array is upright.
- Animated GIF / PNG / WebP: the first frame.
"""
from __future__ import annotations

import logging
import os
import stat
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

#: Resampling filters by the name users pass as ``resample=``.
RESAMPLE: dict[str, int] = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

#: Default decompression-bomb limit (pixels of one frame), refused from the header alone.
DEFAULT_MAX_PIXELS = 64_000_000

#: Background that transparent pixels are composited over (RGB), for every alpha kind alike.
ALPHA_BACKGROUND = (255, 255, 255)

#: Two channels count as different ("the image has color") when some pixel differs by more than
#: this many levels; a small tolerance keeps gray JPEGs saved as RGB (rounding in YCbCr) gray.
COLOR_TOLERANCE = 2

# Only formats that announce themselves with real magic bytes: Pillow also has formats with no or
# weak signatures (TGA, SPIDER, MPEG, DIB, PCX, SGI ...) whose open() can "succeed" on random bytes,
# which would turn junk into garbage images, and EPS would hand the file to Ghostscript.
_FORMATS_WANTED = ("PNG", "JPEG", "MPO", "GIF", "BMP", "TIFF", "WEBP", "PPM", "ICO", "JPEG2000", "AVIF", "QOI")
Image.init()
FORMATS: tuple[str, ...] = tuple(f for f in _FORMATS_WANTED if f in Image.OPEN)

#: Extensions that mark a file as meant to be an image: such a file that does not decode is
#: reported as unreadable; any other non-image file is silently skipped (and counted).
IMAGE_EXTENSIONS = frozenset(
    ".png .apng .jpg .jpeg .jpe .jfif .gif .bmp .dib .tif .tiff .webp .ppm .pgm .pbm .pnm .ico "
    ".jp2 .j2k .jpx .avif .heic .heif .qoi .pcx .sgi .rgb .tga".split()
)

_ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}


@dataclass(frozen=True)
class Decoded:
    """What `decode_file` made of one file.

    status: ``"ok"``, ``"unreadable"`` (meant to be an image but refused; ``reason`` says why) or
        ``"skipped"`` (not an image at all).
    array: uint8 (H, W) or (H, W, 3) when ok (resized when a target size was given).
    size: (H, W) after EXIF rotation, before any resizing.
    mode: the file's decoded PIL mode before conversion (``L``, ``RGB``, ``I;16``, ``P`` ...).
    color: True when the channels differ (see `COLOR_TOLERANCE`).
    """

    status: str
    array: np.ndarray | None = None
    size: tuple[int, int] = (0, 0)
    mode: str = ""
    color: bool = False
    reason: str = ""


def looks_like_image_name(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def strong_magic(head: bytes) -> bool:
    """True when the first bytes are an unmistakable image signature (PNG, JPEG, GIF, TIFF, WebP,
    BMP, JPEG 2000, AVIF, QOI): such a file that fails to decode is a broken image, whatever its name."""
    return (
        head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*",
                         b"\x00\x00\x00\x0cjP  ", b"\xffO\xffQ", b"qoif"))
        or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
        or (head[:2] == b"BM" and len(head) >= 18 and head[14] in (12, 40, 52, 56, 64, 108, 124))
        or head[4:12] in (b"ftypavif", b"ftypavis")
    )


def _sniff(head: bytes) -> str:
    """A short description of non-image content, for the reason text."""
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftyphevc"):
        return "HEIC/HEIF, which this Pillow cannot decode"
    if head.startswith(b"%PDF"):
        return "a PDF, not an image"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive, not an image"
    if head.startswith((b"<svg", b"<?xml")) or b"<svg" in head[:256]:
        return "SVG/XML text (vector images are not supported)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        return "text, not an image"
    return "unknown content, not an image"


def _reason(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def decode_file(
    path: str,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    size: tuple[int, int] | None = None,
    resample: str = "bilinear",
    listed: bool = False,
) -> Decoded:
    """Decode ``path`` into the normal form (``L`` or ``RGB``), resized to ``size`` (H, W) if given.

    ``listed`` means the user named the file explicitly (a CSV row): a non-image is then
    unreadable rather than skipped. Never raises for a bad file.
    """
    meant = listed or looks_like_image_name(path)

    def refuse(reason: str) -> Decoded:
        return Decoded("unreadable" if meant else "skipped", reason=reason)

    try:
        st = os.stat(path)  # follows symlinks
    except FileNotFoundError:
        kind = "broken symbolic link" if os.path.islink(path) else "file not found"
        return refuse(kind)
    except OSError as e:
        return refuse(f"cannot stat: {e.strerror or _reason(e)}")
    if not stat.S_ISREG(st.st_mode):
        # FIFOs, sockets and devices are never opened: reading a FIFO would block forever.
        return Decoded("skipped", reason="not a regular file")
    if st.st_size == 0:
        return refuse("empty file (0 bytes)")
    try:
        fh = open(path, "rb")
    except PermissionError:
        return refuse("permission denied")
    except OSError as e:
        return refuse(f"cannot open: {e.strerror or _reason(e)}")
    with fh:
        head = fh.read(512)
        fh.seek(0)
        # A file that starts like an image but breaks is a broken image; one whose name does not
        # say "image" and whose start only resembles a weak signature (a PPM "P1" text line) is
        # just some other file.
        broken = "unreadable" if meant or strong_magic(head) else "skipped"
        try:
            with warnings.catch_warnings():
                # Our own pixel limit below is the one that counts; PIL's warning would be noise.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(fh, formats=FORMATS)
        except UnidentifiedImageError:
            return refuse(_sniff(head))
        except Image.DecompressionBombError as e:
            return Decoded(broken, reason=f"decompression bomb refused before decoding ({e})")
        except Exception as e:  # a malformed header: PIL raises all sorts (SyntaxError, struct.error ...)
            return Decoded(broken, reason=f"corrupt header ({_reason(e)})")
        try:
            w, h = im.size
            if w <= 0 or h <= 0:
                return Decoded(broken, reason=f"invalid size {w}x{h} in header")
            if w * h > max_pixels:
                # Refused from the header alone: no pixel has been decoded yet.
                return Decoded(
                    broken,
                    reason=f"decompression bomb: {w}x{h} = {w * h:,} pixels is above the limit of {max_pixels:,} "
                    f"(raise max_pixels to load it)",
                )
            mode = im.mode
            orig: tuple[int, int] | None = None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # EXIF / palette warnings on odd but valid files
                if size is not None and im.format in ("JPEG", "MPO") and min(w, h) >= 2 * max(size):
                    # Shrinking anyway: let libjpeg decode at 1/2, 1/4 or 1/8 scale (several times
                    # faster on photos). draft() keeps both sides >= the largest target side, so
                    # the final resize still only shrinks. The original size comes from the header.
                    swap = _exif_orientation(im) in (5, 6, 7, 8)
                    orig = (w, h) if swap else (h, w)
                    im.draft(None, (max(size), max(size)))
                im.load()  # first frame of an animation; raises on truncated / corrupt data
                try:
                    im = ImageOps.exif_transpose(im)
                except Exception as e:  # broken EXIF: keep the image unrotated rather than lose it
                    log.debug("%s: ignoring broken EXIF orientation (%s)", path, _reason(e))
                arr = to_normal(im)
        except Exception as e:  # truncated data, bad checksums, decoder errors, out of memory ...
            return Decoded(broken, reason=f"cannot decode ({_reason(e)})")
        finally:
            im.close()
    hh, ww = orig if orig is not None else arr.shape[:2]
    color = is_color(arr)
    if size is not None and arr.shape[:2] != tuple(size):
        arr = resize(arr, size, resample)
    return Decoded("ok", array=arr, size=(int(hh), int(ww)), mode=mode, color=color)


def _exif_orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # unreadable EXIF counts as upright, as exif_transpose will treat it
        return 1


def display_name(path: str) -> str:
    """``path`` safe to print: undecodable bytes as \\xNN escapes, control characters escaped."""
    text = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def to_normal(im: Image.Image) -> np.ndarray:
    """PIL image -> uint8 (H, W) for gray modes or (H, W, 3) for everything else (see module doc)."""
    mode = im.mode
    if mode == "L":
        return np.asarray(im, dtype=np.uint8).copy()
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8).copy()
    if mode == "1":
        return np.asarray(im.convert("L"), dtype=np.uint8).copy()
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im).astype(np.float64)
        if mode == "I" and (a.min(initial=0) < 0 or a.max(initial=0) > 65535):
            return _stretch(a)
        # 16-bit: map 0..65535 onto 0..255 (x / 257 is exact for values that were 8-bit * 257).
        return np.rint(a * (255.0 / 65535.0)).clip(0, 255).astype(np.uint8)
    if mode == "F":
        a = np.asarray(im).astype(np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        if a.size and a.min() >= 0.0 and a.max() <= 1.0:
            return np.rint(a * 255.0).astype(np.uint8)
        return _stretch(a)
    if mode == "P":
        if "transparency" in im.info:
            return _composite(im.convert("RGBA"))
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    if mode in _ALPHA_MODES:
        if mode in ("LA", "La"):
            return _composite(im.convert("LA"))
        return _composite(im.convert("RGBA"))
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()  # CMYK, YCbCr, LAB, HSV, RGBX ...


def _stretch(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min(initial=0)), float(a.max(initial=0))
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.rint((a - lo) * (255.0 / (hi - lo))).clip(0, 255).astype(np.uint8)


def _composite(im: Image.Image) -> np.ndarray:
    """LA or RGBA -> L or RGB over `ALPHA_BACKGROUND` (straight alpha, rounded)."""
    a = np.asarray(im).astype(np.float64)
    alpha = a[..., -1:] / 255.0
    color = a[..., :-1]
    if im.mode == "LA":
        bg = np.array([sum(ALPHA_BACKGROUND) / 3.0])
        out = color * alpha + bg * (1.0 - alpha)
        return np.rint(out[..., 0]).clip(0, 255).astype(np.uint8)
    bg = np.array(ALPHA_BACKGROUND, np.float64)
    out = color * alpha + bg * (1.0 - alpha)
    return np.rint(out).clip(0, 255).astype(np.uint8)


def is_color(arr: np.ndarray) -> bool:
    """True when an (H, W, 3) array has channels that differ by more than `COLOR_TOLERANCE`."""
    if arr.ndim != 3:
        return False
    a = arr.astype(np.int16)
    return bool(
        (np.abs(a[..., 0] - a[..., 1]).max(initial=0) > COLOR_TOLERANCE)
        or (np.abs(a[..., 0] - a[..., 2]).max(initial=0) > COLOR_TOLERANCE)
    )


def resize(arr: np.ndarray, size: tuple[int, int], resample: str = "bilinear") -> np.ndarray:
    """Resize an (H, W) or (H, W, 3) uint8 array to ``size`` (H, W) with the named PIL filter."""
    h, w = size
    if arr.shape[:2] == (h, w):
        return arr
    return np.asarray(Image.fromarray(arr).resize((w, h), resample=RESAMPLE[resample]), dtype=np.uint8).copy()


def to_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    """(H, W) or (H, W, 3) -> (C, H, W) with C = ``channels`` (RGB -> L with PIL's luma weights)."""
    if channels == 1:
        if arr.ndim == 3:
            arr = np.asarray(Image.fromarray(arr).convert("L"), dtype=np.uint8)
        return arr[None]
    if arr.ndim == 2:
        return np.repeat(arr[None], 3, axis=0)
    return arr.transpose(2, 0, 1)


def decode_job(job: tuple[str, int, Any, str, bool]) -> Decoded:
    """Picklable entry point for worker pools: ``(path, max_pixels, size, resample, listed)``."""
    path, max_pixels, size, resample, listed = job
    return decode_file(path, max_pixels=max_pixels, size=size, resample=resample, listed=listed)
