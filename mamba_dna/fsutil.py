"""Atomic file and directory writes: nothing half-written ever looks complete."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `dest`; rename it onto `dest` only if the block succeeds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix + ".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the result the permissions a plain open() would.
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, dest)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside `dest`; it becomes `dest` only when complete."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json_object(path: str | os.PathLike, holder: str) -> dict:
    """A JSON object from `path`; a missing file or bad JSON is one InputError line.

    `holder` says what should contain the file, e.g. "a model directory holds config.json".
    """
    from mamba_dna.errors import InputError

    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such file ({holder})") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(d, dict):
        raise InputError(f"{path}: expected a JSON object")
    return d


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


# ----------------------------------------------------------------------------- output safety
# Every command that writes a file calls these before it writes anything:
#   guard_output(out, inputs)   refuse an output that is (or would replace) one of the inputs
#   prepare_output(out)         create the parent directory (an OS failure is one line)
#   with output_lock(out):      one writer at a time ("in use by pid N" for the second)
#   with os_errors(out):        EACCES / EROFS / ENOSPC / ... -> one-line InputError


def _same_file(a: Path, b: Path) -> bool:
    try:
        sa, sb = a.stat(), b.stat()
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def guard_output(out, inputs, what: str = "--out", *, directory: bool = False) -> None:
    """Refuse an output path that is one of the inputs: the same path, a symlink resolving to
    it, or a hard link of it (same device and inode). With `directory=True` (an output
    directory that is replaced as a whole) an input inside it is refused too.

    `inputs` may hold None and non-path specs ("markov:2", "hf:org/name", "-"); those are
    skipped when no such file exists.
    """
    from mamba_dna.errors import InputError

    if out is None or str(out) in ("", "-"):
        return
    out_p = Path(out)
    out_r = out_p.resolve()
    for inp in inputs:
        if inp is None or str(inp) in ("", "-"):
            continue
        in_p = Path(inp)
        in_r = in_p.resolve()
        clash = out_r == in_r or _same_file(out_p, in_p)
        if not clash and directory and in_p.exists():
            clash = out_r in in_r.parents
            if clash:
                raise InputError(f"{what} {out}: the input {inp} lies inside this output "
                                 "directory, which would be replaced",
                                 hint=f"choose another {what}")
        if clash:
            raise InputError(f"{what} {out}: this is the input file {inp}; writing it would "
                             "destroy the input", hint=f"choose another {what}")


_OS_HINTS = {
    errno.EACCES: ("permission denied", "choose a writable location or fix the permissions"),
    errno.EPERM: ("operation not permitted", "choose a writable location or fix the permissions"),
    errno.EROFS: ("read-only file system", "write the output to a writable file system"),
    errno.ENOSPC: ("no space left on the device", "free some space or write the output elsewhere"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or write the output elsewhere"),
    errno.ENOENT: ("no such file or directory", "check the path"),
    errno.ENOTDIR: ("a parent of this path is not a directory", "check the path"),
    errno.EISDIR: ("is a directory", "give a file path"),
    errno.ENAMETOOLONG: ("file name too long", "use a shorter path"),
    errno.EMFILE: ("too many open files", "raise `ulimit -n`"),
    errno.EIO: ("input/output error", "check the disk or network file system"),
}


def _errno_of(e: OSError) -> int | None:
    """errno of an OSError; h5py and some C libraries only put it inside the message."""
    if e.errno:
        return e.errno
    m = re.search(r"errno\s*=\s*(\d+)", str(e))
    return int(m.group(1)) if m else None


def _filename_of(e: OSError) -> str | None:
    if e.filename:
        return os.fsdecode(e.filename)
    m = re.search(r"name\s*=\s*'([^']+)'", str(e))
    return m.group(1) if m else None


def os_error_message(e: OSError, path=None, action: str = "write") -> str:
    """One line naming the path, what went wrong and what to do."""
    where = _filename_of(e) or (str(path) if path is not None else None)
    if path is not None and where and not os.path.abspath(where).startswith(
            os.path.abspath(Path(path).parent)):
        action = "access"  # the failing file is not the output's (an input, a cache file)
    code = _errno_of(e)
    if code in _OS_HINTS:
        what, todo = _OS_HINTS[code]
        msg = f"cannot {action} {where}: {what} ({todo})" if where else f"{what} ({todo})"
    else:
        text = e.strerror or str(e).split("\n")[0]
        msg = f"cannot {action} {where}: {text}" if where else text
    return msg


@contextmanager
def os_errors(path=None, action: str = "write") -> Iterator[None]:
    """Turn an OSError raised inside the block into a one-line InputError naming `path`."""
    from mamba_dna.errors import InputError

    try:
        yield
    except OSError as e:
        raise InputError(os_error_message(e, path, action)) from e


def prepare_output(out) -> Path:
    """Create the parent directory of an output path; returns the path."""
    out = Path(out)
    with os_errors(out.parent, "create the directory"):
        out.parent.mkdir(parents=True, exist_ok=True)
    return out


def lock_path(path) -> Path:
    """The sidecar lock file of an output file or directory: `<path>.lock` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


@contextmanager
def output_lock(path, what: str = "--out") -> Iterator[Path]:
    """Hold an exclusive lock on an output (file or directory) for the whole block.

    The lock is `flock` on the sidecar `<path>.lock`, which holds the owner's pid; a second
    writer gets a one-line InputError "in use by pid N". A process that dies loses its flock
    with it, so a lock file left by a killed job never blocks. The sidecar is removed on
    release. Without fcntl (Windows) the block runs unlocked.
    """
    from mamba_dna.errors import InputError

    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield lock_path(path)
        return
    lp = lock_path(path)
    prepare_output(lp)
    while True:
        with os_errors(lp, "create the lock file"):
            fd = os.open(lp, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            who = f"pid {owner}" if owner.isdigit() else "another process"
            raise InputError(f"{what} {path}: in use by {who} (lock {lp})",
                             hint="wait for it to finish, or choose another output") from None
        # the previous owner may have removed the sidecar between our open and flock
        try:
            if os.stat(lp).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        with os_errors(lp, "write the lock file"):  # a full disk fails here, before any data
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield lp
    finally:
        with suppress(OSError):
            os.unlink(lp)
        os.close(fd)  # releases the flock


class Terminated(BaseException):
    """SIGTERM (a job scheduler's cancel, `timeout`, `kill`) raised in the main thread, so
    `finally` blocks and atomic writers clean up; the CLI prints one line and exits 143."""


@contextmanager
def terminate_as_exception():
    """While inside, SIGTERM raises `Terminated` in the main thread (the default kills the
    process before any cleanup); the previous handler is restored on the way out, so a
    process that calls the CLI in-process (tests, notebooks) keeps its own. Pipelines that
    checkpoint on SIGTERM install their own handler inside."""
    import signal

    def _raise(signum, frame):
        raise Terminated()

    previous = None
    with suppress(ValueError):  # not the main thread
        previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        if previous is not None:
            with suppress(ValueError):
                signal.signal(signal.SIGTERM, previous)


def check_free_space(path, nbytes: int, what: str = "--out") -> None:
    """Refuse to start a write of about `nbytes` where the file system has less free space.

    Some writers cannot fail cleanly mid-write (HDF5 can crash the process on ENOSPC), so a
    known output size is checked before the first byte; the OS-error mapping still catches
    what the estimate misses.
    """
    from mamba_dna.errors import InputError

    d = Path(path).parent
    while not d.exists() and d != d.parent:
        d = d.parent
    try:
        free = shutil.disk_usage(d).free
    except OSError:
        return
    if nbytes > free:
        raise InputError(f"{what} {path}: needs about {nbytes / 2**20:,.1f} MiB but {d} has "
                         f"{free / 2**20:,.1f} MiB free", hint="free some space or write elsewhere")
