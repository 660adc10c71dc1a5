"""Writing files so that nobody ever reads half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: Path, write: Callable[[Any], None], binary: bool = True,
                 temp_suffix: str = ".partial") -> None:
    """Write ``path`` through ``write(handle)`` on a temp file in the same folder, then rename it into place: a
    failure leaves the previous file (or none) and no temp file. Temp files end in ``temp_suffix`` (so a killed
    process's leftovers can be found) and the result is readable like any ordinary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=temp_suffix)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
            write(handle)
        os.chmod(tmp, 0o644)  # mkstemp makes the file owner-only
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
