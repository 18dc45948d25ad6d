"""Files written all or nothing: a temporary file in the same folder, then a rename."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_atomic(target: str | Path, data: str | bytes) -> None:
    """Write via a temporary file in the same folder and rename: all or nothing.

    Missing parent folders are created.
    """
    path = Path(target)
    payload = data if isinstance(data, bytes) else data.encode("utf-8")
    if str(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        # mkstemp creates the file 0600; give it the permissions a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
