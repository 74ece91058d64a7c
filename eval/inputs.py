"""Image sources for the evaluator: folders, tensors/arrays, and iterables of batches → uint8 batches.

Folders are read as torch-fidelity 0.4 reads them (``utils.glob_samples_paths``, ``datasets.py``):
the files directly in the folder (not recursive) whose extension is png/jpg/jpeg, sorted by real path,
each opened with PIL and ``convert("RGB")``. Unlike torch-fidelity, mgen skips hidden files (names starting
with ``.``: the ``.tmp-*`` files a killed writer leaves), checks the folder first and fails with one line on an
empty folder, mixed image sizes, a mix of grey and colour images, an image larger than :data:`MAX_PIXELS`
(a decompression bomb), or an unreadable file, and decodes in a background thread pool instead of DataLoader
worker processes.

Tensors/arrays: uint8 values are used as they are; floating-point images follow the mgen convention
(``[-1, 1]``) and are quantised like ``mgen.images.to_uint8`` (the PNG writer), so streaming features
equal those of the same samples written as PNG. ``N×C×H×W`` or ``N×H×W×C``; ``C = 1`` is grey and is
repeated to RGB (as PIL's ``convert("RGB")`` does).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from mgen.errors import UserError

EXTENSIONS = ("png", "jpg", "jpeg")  # torch-fidelity's samples_find_ext default
#: largest image accepted (pixels): 8192×8192, far above any evaluation set, below Pillow's own bomb limit
#: (``Image.MAX_IMAGE_PIXELS``, 89.5 M, warning; twice that, error)
MAX_PIXELS = 8192 * 8192
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def list_image_files(folder: str | os.PathLike) -> list[str]:
    """Image files directly in ``folder``, sorted by real path (torch-fidelity's order); hidden files skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"not a folder: {folder}")
    try:
        names = os.listdir(folder)
    except OSError as e:
        raise UserError(f"cannot list {folder}: {e.strerror or e}") from None
    files = [os.path.realpath(folder / f) for f in names
             if not f.startswith(".") and os.path.splitext(f)[1].lower().lstrip(".") in EXTENSIONS
             and (folder / f).is_file()]
    files.sort()
    if not files:
        raise UserError(f"no images (.png/.jpg/.jpeg) in {folder}")
    return files


@dataclass
class ImageSource:
    """A set of images: ``batches(batch_size)`` yields uint8 ``B×3×H×W`` CPU tensors."""

    name: str
    batches: Callable[[int], Iterator[torch.Tensor]]
    num_images: int | None  # None: unknown in advance (an iterable of batches)
    grey: bool | None  # True: grey images; False: colour; None: unknown
    size: tuple[int, int] | None


def _grey(mode: str) -> bool:
    return mode in GREY_MODES


@contextlib.contextmanager
def _open_image(f: str, strict_warnings: bool = True) -> Iterator[Any]:
    """``PIL.Image.open`` with every failure (decompression bombs included) as one line naming the file.

    ``strict_warnings``: Pillow's ``DecompressionBombWarning`` becomes that line too (``warnings.catch_warnings``
    is not thread-safe, so the decoding threads skip it: their files passed this check already, and
    :data:`MAX_PIXELS` is below Pillow's warning limit)."""
    from PIL import Image, UnidentifiedImageError

    try:
        if strict_warnings:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(f)
        else:
            im = Image.open(f)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UserError(f"image {f} is too large to decode safely (a decompression bomb?): {e}") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"cannot read image {f}: {e}") from None
    with im:
        w, h = im.size
        if w * h > MAX_PIXELS:
            raise UserError(f"image {f} is {w}×{h} pixels, more than the {MAX_PIXELS:,} mgen decodes "
                            "(a decompression bomb?)")
        yield im


def folder_source(folder: str | os.PathLike, workers: int = 4) -> ImageSource:
    """Check a folder of images (sizes, modes, headers) and return a source that decodes it in threads."""
    from PIL import UnidentifiedImageError

    files = list_image_files(folder)
    size = mode_grey = None
    for f in files:
        with _open_image(f) as im:
            s, g = im.size, _grey(im.mode)
        if size is None:
            size, mode_grey, first = s, g, f
        elif s != size:
            raise UserError(f"images of different sizes in {folder}: {first} is {size[0]}×{size[1]}, "
                            f"{f} is {s[0]}×{s[1]}")
        elif g != mode_grey:
            kinds = ("grey", "colour")
            raise UserError(f"grey and colour images mixed in {folder}: {first} is {kinds[not mode_grey]}, "
                            f"{f} is {kinds[not g]}")

    def load(f: str) -> np.ndarray:
        with _open_image(f, strict_warnings=False) as im:
            try:
                return np.asarray(im.convert("RGB"))
            except (UnidentifiedImageError, OSError, ValueError) as e:
                raise UserError(f"cannot read image {f}: {e}") from None

    def batches(batch_size: int) -> Iterator[torch.Tensor]:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            pending = None
            chunks = [files[i:i + batch_size] for i in range(0, len(files), batch_size)]
            for i, chunk in enumerate(chunks):
                cur = pending if pending is not None else [pool.submit(load, f) for f in chunk]
                # prefetch the next chunk while the caller runs the network on this one
                pending = [pool.submit(load, f) for f in chunks[i + 1]] if i + 1 < len(chunks) else None
                arr = np.stack([c.result() for c in cur])
                yield torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()

    return ImageSource(str(folder), batches, len(files), bool(mode_grey), (size[1], size[0]))


def to_uint8_batch(x: Any) -> tuple[torch.Tensor, bool]:
    """One batch of images (tensor or array, NCHW or NHWC, uint8 or float in [-1, 1]) → (uint8 N×3×H×W, grey)."""
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if not torch.is_tensor(t):
        raise UserError(f"images must be a tensor or an array, got {type(x).__name__}")
    if t.dim() == 3:
        t = t[None]
    if t.dim() != 4:
        raise UserError(f"images must be N×C×H×W (or N×H×W×C), got shape {tuple(t.shape)}")
    if t.shape[1] not in (1, 3) and t.shape[-1] in (1, 3):
        t = t.permute(0, 3, 1, 2)
    if t.shape[1] not in (1, 3):
        raise UserError(f"images must have 1 (grey) or 3 (RGB) channels, got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise UserError("an empty batch of images")
    if t.dtype == torch.uint8:
        u = t
    elif t.is_floating_point():
        lo, hi = float(t.min()), float(t.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise UserError("images contain NaN or infinite values")
        if lo < -1.5 or hi > 1.5:
            raise UserError(f"floating-point images must be in [-1, 1] (got values in [{lo:.3g}, {hi:.3g}]); "
                            "pass uint8 for 0…255 images")
        # the same rounding as mgen.images.to_uint8 (what the PNG writer stores)
        u = ((t.float().clamp(-1, 1) + 1) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8)
    else:
        raise UserError(f"images must be uint8 or floating point, got {t.dtype}")
    grey = u.shape[1] == 1
    if grey:
        u = u.expand(-1, 3, -1, -1)
    return u.contiguous(), grey


def tensor_source(images: Any, name: str = "images") -> ImageSource:
    first, grey = to_uint8_batch(images)

    def batches(batch_size: int) -> Iterator[torch.Tensor]:
        for i in range(0, first.shape[0], batch_size):
            yield first[i:i + batch_size]

    return ImageSource(name, batches, first.shape[0], grey, tuple(first.shape[-2:]))


def iterable_source(it: Iterable[Any], name: str = "batches") -> ImageSource:
    """A one-pass source over an iterable of batches (checked for consistent size and channels)."""
    state: dict[str, Any] = {"used": False}
    src = ImageSource(name, lambda bs: iter(()), None, None, None)

    def batches(batch_size: int) -> Iterator[torch.Tensor]:
        if state["used"]:
            raise UserError(f"{name}: a generator of batches can be read only once")
        state["used"] = True
        n = 0
        pending: list[torch.Tensor] = []
        for b in it:
            u, grey = to_uint8_batch(b)
            if src.size is None:
                src.size, src.grey = tuple(u.shape[-2:]), grey
            elif tuple(u.shape[-2:]) != src.size:
                raise UserError(f"{name}: batches of different image sizes ({src.size} then {tuple(u.shape[-2:])})")
            elif grey != src.grey:
                raise UserError(f"{name}: grey and colour batches mixed")
            n += u.shape[0]
            # re-batch to exactly batch_size, so features do not depend on how the caller cut the batches
            pending.append(u)
            have = sum(p.shape[0] for p in pending)
            if have >= batch_size:
                allx = torch.cat(pending)
                full = (have // batch_size) * batch_size
                for i in range(0, full, batch_size):
                    yield allx[i:i + batch_size]
                pending[:] = [allx[full:]] if full < have else []
        if pending:
            yield torch.cat(pending)
        if n == 0:
            raise UserError(f"{name}: no images")
        src.num_images = n

    src.batches = batches
    return src


def as_source(x: Any, name: str) -> ImageSource:
    """Folder path, tensor/array, or iterable of batches → :class:`ImageSource`."""
    if isinstance(x, ImageSource):
        return x
    if isinstance(x, (str, os.PathLike)):
        p = Path(x)
        if p.is_dir():
            return folder_source(p)
        if not p.exists():
            raise UserError(f"{name}: no such folder or file: {p}")
        raise UserError(f"{name}: {p} is not a folder of images")
    if torch.is_tensor(x) or isinstance(x, np.ndarray):
        return tensor_source(x, name)
    if isinstance(x, Iterable):
        return iterable_source(x, name)
    raise UserError(f"{name}: expected an image folder, a tensor/array of images or an iterable of batches, "
                    f"got {type(x).__name__}")
