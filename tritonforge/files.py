"""Writing files a reader may open at any moment: whole or not at all."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tritonforge.errors import TritonForgeError


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and one rename, so a
    reader (or a crash) never meets half a file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise TritonForgeError(f"cannot write {path}: {exc.strerror or exc}; choose another "
                               "output path or fix its permissions") from exc
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
