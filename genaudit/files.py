"""Files written all or nothing: a temporary file in the same folder, then a rename.

:func:`staged_outputs` writes the outputs of one run as a set (:class:`OutputSet`): every file is
written to a temporary file beside its target first, and only when all of them are written are
they renamed into place; on any failure every temporary is removed and existing files are left
as they were. :func:`write_atomic` is the same for one file.

What a target is decides how it is written:

- a regular file, or a name that does not exist yet: a temporary file in the target's folder,
  then a rename (missing parent folders are created, and removed again if the set fails);
- a symbolic link to a regular file (or a dangling one): written *through* the link, atomically:
  the file the link points to is replaced and the link is kept (what a text editor does);
- anything else, reached directly or through links: a character device (``/dev/null``), a FIFO,
  a socket, or whatever ``/proc`` and ``/dev/fd`` links lead to: opened and written in place,
  never replaced (a rename would put a regular file where the device was); what is open as
  standard output (``/dev/stdout``, a link to it) goes through the writer of ``-``;
- ``-``: standard output, through the writer the caller gives (the command line's).

Such streams cannot be rolled back, so a set is committed in this order: (1) every file's
temporary is written and synced, which is where a full disk or an I/O error shows; (2) the
streams and standard output are written; (3) the temporaries are renamed. A failure in (1) or
(2) leaves no file changed (standard output or a stream may have received part of the data when
(2) itself fails). A failure in (3), rare (a target replaced by a folder meanwhile), restores the
files renamed before it from hard-link backups where the file system has hard links.

Every ``OSError`` on the way is raised as :class:`OutputError` (exit 3): ``cannot write FILE:
No space left on device``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidInputError, first_line

STDOUT = "-"
# Prefixes under which an existing file is a kernel interface, never a file to replace.
_STREAM_PREFIXES = ("/proc/", "/sys/", "/dev/fd/")
_TEMP_SUFFIX = ".tmp"


class OutputError(InvalidInputError, OSError):
    """An output could not be written: ``cannot write FILE: REASON`` (exit 3).

    Also an ``OSError`` (with the ``errno`` of the failure), for callers of the Python API that
    catch those."""


def cannot_write(target: str | Path, exc: OSError) -> OutputError:
    """The :class:`OutputError` for ``exc`` raised while writing ``target``."""
    where = "standard output" if str(target) == STDOUT else str(target)
    error = OutputError(f"cannot write {where}: {exc.strerror or first_line(exc)}")
    error.errno = exc.errno
    return error


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (``os.write`` may write fewer)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def through_proc(path: str | Path) -> bool:
    """Whether ``path`` or a link on the way to it is under ``/proc``, ``/sys`` or ``/dev/fd``
    (``/dev/stdout`` → ``/proc/self/fd/1``): a kernel interface, written in place."""
    p = os.path.abspath(path)
    for _ in range(40):  # the kernel's limit on links followed
        if p.startswith(_STREAM_PREFIXES):
            return True
        if not os.path.islink(p):
            return False
        p = os.path.normpath(os.path.join(os.path.dirname(p), os.readlink(p)))
    return False


def is_stream(path: str | Path) -> bool:
    """Whether ``path`` exists and is written in place: not a regular file (after links), or a
    file reached through ``/proc``, ``/sys`` or ``/dev/fd``. Directories are not streams."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    if stat.S_ISDIR(mode):
        return False
    return not stat.S_ISREG(mode) or through_proc(path)


def same_file(path: str | Path, fd: int) -> bool:
    """Whether ``path`` is the file open as ``fd`` (False when either cannot be examined)."""
    try:
        a, b = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@dataclass
class _Staged:
    target: str  # as the caller named it, for messages
    final: str  # the file renamed onto: the target, or what its symbolic link points to
    temp: str
    backup: str | None = None
    existed: bool = False  # a file was replaced: without a backup it cannot be put back
    renamed: bool = False


@dataclass
class OutputSet:
    """The outputs of one run, written together (see the module's docstring for the order).

    :meth:`add` writes a file's temporary at once (so a full disk shows before anything is
    committed) and keeps streams and standard output in memory; :meth:`commit` writes the
    streams and renames the files; :meth:`abort` removes every temporary. Use it through
    :func:`staged_outputs`.
    """

    stdout: Callable[[bytes], None] | None = None
    files: list[_Staged] = field(default_factory=list)
    streams: list[tuple[str, bytes]] = field(default_factory=list)
    created: list[str] = field(default_factory=list)  # folders made for the files, in order
    written: list[str] = field(default_factory=list)  # every target, once committed
    done: bool = False

    @property
    def targets(self) -> list[str]:
        """Every target added so far, in order (``-`` for standard output)."""
        return [s.target for s in self.files] + [t for t, _ in self.streams]

    def add(self, target: str | Path, data: str | bytes) -> None:
        """Stage ``data`` for ``target`` (``-``: standard output); OutputError if it fails."""
        if self.done:
            raise RuntimeError("this output set is already committed or aborted")
        name = str(target)
        payload = data if isinstance(data, bytes) else data.encode("utf-8")
        if name == STDOUT:
            if self.stdout is None:
                raise ValueError("standard output needs a writer")
            self.streams.append((name, payload))
            return
        if is_stream(name):
            # /dev/stdout and its like: through the writer of ``-``, in order with the rest
            stdout = self.stdout is not None and same_file(name, 1)
            self.streams.append((STDOUT if stdout else name, payload))
            return
        if os.path.isdir(name):
            raise OutputError(f"cannot write {name}: {os.strerror(errno.EISDIR)}")
        final = os.path.realpath(name) if os.path.islink(name) else name
        if any(os.path.abspath(s.final) == os.path.abspath(final) for s in self.files):
            raise ValueError(f"{name} is written twice")  # callers check this beforehand
        try:
            self.files.append(_Staged(name, final, self._write_temp(final, payload)))
        except OSError as exc:
            raise cannot_write(name, exc) from None

    def _write_temp(self, final: str, payload: bytes) -> str:
        folder = os.path.dirname(final) or "."
        self._make_folders(folder)
        # a short prefix, so that the temporary's name fits wherever the target's name does
        base = os.path.basename(final)
        fd, temp = tempfile.mkstemp(prefix=f".{base[:40]}.", suffix=_TEMP_SUFFIX, dir=folder)
        try:
            try:
                write_all(fd, payload)
                os.fsync(fd)  # a delayed-allocation ENOSPC or EIO shows here, not after
            finally:
                os.close(fd)
            # mkstemp creates the file 0600; give it the permissions a plain open() would
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temp, 0o666 & ~umask)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        return temp

    def _make_folders(self, folder: str) -> None:
        missing = []
        p = os.path.abspath(folder)
        while not os.path.isdir(p) and p != os.path.dirname(p):
            missing.append(p)
            p = os.path.dirname(p)
        for path in reversed(missing):
            os.mkdir(path)
            self.created.append(path)

    def commit(self) -> None:
        """Write the streams and standard output, then rename every file into place."""
        if self.done:
            return
        self.done = True
        try:
            for target, payload in self.streams:
                self._write_stream(target, payload)
            self._rename_all()
        except BaseException:
            self._remove_temporaries()
            raise
        for staged in self.files:
            if staged.backup is not None:
                with contextlib.suppress(OSError):
                    os.unlink(staged.backup)
        self.written = self.targets

    def abort(self) -> None:
        """Remove every temporary (and the folders made for them); no target is touched."""
        self.done = True
        self._remove_temporaries()

    def _write_stream(self, target: str, payload: bytes) -> None:
        if target == STDOUT:
            assert self.stdout is not None
            self.stdout(payload)  # the writer raises its own OutputError
            return
        try:
            fd = os.open(target, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):  # e.g. /dev/stdout on a file: append
                    os.lseek(fd, 0, os.SEEK_END)
                write_all(fd, payload)
            finally:
                os.close(fd)
        except OSError as exc:
            raise cannot_write(target, exc) from None

    def _rename_all(self) -> None:
        current: _Staged | None = None
        try:
            for staged in self.files:
                current = staged
                if os.path.isfile(staged.final):
                    staged.existed = True
                    staged.backup = staged.temp + ".old"
                    try:
                        os.link(staged.final, staged.backup)
                    except OSError:
                        staged.backup = None  # no hard links here: no way back for this one
                os.replace(staged.temp, staged.final)
                staged.renamed = True
        except OSError as exc:
            self._restore()
            raise cannot_write(current.target if current else "", exc) from None
        except BaseException:
            self._restore()
            raise

    def _restore(self) -> None:
        for staged in self.files:
            with contextlib.suppress(OSError):
                if staged.renamed and staged.backup is not None:
                    os.replace(staged.backup, staged.final)
                elif staged.renamed and not staged.existed:
                    os.unlink(staged.final)  # there was no file before
                elif staged.backup is not None:
                    os.unlink(staged.backup)
            staged.renamed = False
            staged.backup = None

    def _remove_temporaries(self) -> None:
        for staged in self.files:
            if not staged.renamed:
                with contextlib.suppress(OSError):
                    os.unlink(staged.temp)
        if not any(s.renamed for s in self.files):
            for folder in reversed(self.created):
                with contextlib.suppress(OSError):
                    os.rmdir(folder)  # only if still empty


@contextlib.contextmanager
def staged_outputs(stdout: Callable[[bytes], None] | None = None) -> Iterator[OutputSet]:
    """``with staged_outputs() as out: out.add(path, data) …``: commit on a normal exit, abort
    (remove every temporary) on an exception. ``stdout`` writes the bytes of ``-``."""
    out = OutputSet(stdout=stdout)
    try:
        yield out
    except BaseException:
        out.abort()
        raise
    out.commit()


def write_atomic(target: str | Path, data: str | bytes) -> None:
    """Write one file all or nothing (see the module's docstring: links are written through,
    devices and FIFOs in place). Missing parent folders are created. OutputError on failure."""
    with staged_outputs() as out:
        out.add(target, data)
