"""Text where a checkpoint should be: Git LFS pointers, HTML pages, JSON and other text files.

A clone without ``git lfs pull`` holds a pointer of about 130 bytes in place of the weights, and a
failed download saves the server's error page under the checkpoint's name. Both are refused with
one line that says what the file is (:func:`text_error`), before any pickle or tensor parsing.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import CheckpointError

__all__ = ["text_error"]

_HEAD_BYTES = 4096
_LFS = b"version https://git-lfs.github.com/spec/"
_LFS_SIZE = re.compile(rb"^size (\d+)\s*$", re.MULTILINE)
_DOWNLOAD_HINT = "download the file again, from a direct-download link (some need a log-in)"


def _as_text(head: bytes) -> str | None:
    """``head`` as text: UTF-8 (a character cut at the end allowed), no control characters."""
    if b"\x00" in head:
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:
            return None
        text = head[: exc.start].decode("utf-8")
    text = text.removeprefix("\ufeff")
    if all(c.isprintable() or c in "\t\n\r\f\v" for c in text):
        return text
    return None


def _excerpt(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first[:40] + ("…" if len(first) > 40 else "")


def text_error(path: Path, size: int, *, plain_text: bool) -> CheckpointError | None:
    """The error for a checkpoint file that is text, or None when it is not.

    Git LFS pointers, HTML and XML pages and JSON documents (other than a safetensors shard
    index) are recognised always; any other text only with ``plain_text`` (a protocol-0 pickle is
    text too, so the caller asks for that only once the file is known not to be a pickle).
    """
    try:
        with path.open("rb") as fh:
            head = fh.read(_HEAD_BYTES)
    except OSError:
        return None
    text = _as_text(head)
    if text is None:
        return None
    body = text.lstrip()
    lower = body[:_HEAD_BYTES].lower()
    if head.startswith(_LFS):
        found = _LFS_SIZE.search(head)
        target = f" for a {int(found.group(1))}-byte file" if found else ""
        return CheckpointError(
            f"{path} is a Git LFS pointer ({size} bytes){target}, not the weights: run "
            "`git lfs pull`",
            "fetch the LFS objects of the repository (git lfs install once, then git lfs pull), "
            "or download the file itself",
        )
    if lower.startswith(("<!doctype html", "<html")) or (
        lower.startswith("<") and "<html" in lower
    ):
        return CheckpointError(
            f"{path} is an HTML page, not a checkpoint (a failed download?)", _DOWNLOAD_HINT
        )
    if lower.startswith("<?xml"):
        return CheckpointError(
            f"{path} is an XML document, not a checkpoint (a failed download?)", _DOWNLOAD_HINT
        )
    if body.startswith(("{", "[")) and '"weight_map"' not in body:
        return CheckpointError(
            f"{path} is a JSON document ({size} bytes), not a checkpoint",
            "pass the weights file (a JSON file is read only as a safetensors shard index)",
        )
    if not plain_text:
        return None
    if not body:
        return CheckpointError(
            f"checkpoint {path} is empty (only {size} bytes of white space)",
            "re-save or re-download the file",
        )
    return CheckpointError(
        f"{path} is a text file ({size} bytes, starting {_excerpt(body)!r}), not a checkpoint",
        "pass a file written by torch.save or safetensors; the download may have failed",
    )
