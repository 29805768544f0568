"""Where a command's figure goes (``generate``, ``ghost-diagnostics``): ``--out`` is an image file
name or an existing folder, checked before anything is drawn; writing it is one line on failure."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import UserError


def formats() -> list[str]:
    """The file extensions matplotlib writes (png, pdf, svg, jpg, ...)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    return sorted(FigureCanvasAgg.get_supported_filetypes())


def image_path(out: str | os.PathLike | None, run_dir: str | os.PathLike, default_name: str) -> Path:
    """``RUN_DIR/default_name`` without ``out``; ``out/default_name`` when ``out`` is a folder (or ends
    with a slash); else ``out`` itself, which must end in an image extension. Its folder is made
    when missing and must be writable."""
    if out is None:
        path = Path(run_dir) / default_name
    else:
        text = str(out)
        path = Path(out) / default_name if Path(out).is_dir() or text.endswith(("/", os.sep)) else Path(out)
    ext = path.suffix.lower().lstrip(".")
    if ext not in formats():
        what = "has no file extension" if not ext else f"ends in .{ext}, not an image format"
        raise UserError(f"--out {str(out)!r} {what}; give an existing folder or a file name ending in .png "
                        f"(or .{', .'.join(f for f in formats() if f != 'png')})")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write {str(path)!r}: cannot create folder {str(folder)!r} "
                        f"({exc.strerror or type(exc).__name__})") from None
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError(f"cannot write {str(path)!r}: not writable; choose another --out")
    return path


def save_figure(fig: Any, path: Path, **kwargs: Any) -> Path:
    """``fig.savefig(path)``; a full disk or a vanished folder is one UserError line."""
    try:
        fig.savefig(path, **kwargs)
    except OSError as exc:
        raise UserError(f"cannot write {str(path)!r}: {exc.strerror or type(exc).__name__}") from None
    return path


__all__ = ["formats", "image_path", "save_figure"]
