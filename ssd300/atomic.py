"""Writing files so that a reader never sees a half-written one."""

import os
from contextlib import contextmanager

from .errors import UserError


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    The temporary name keeps the extension, so writers that choose a format by
    extension (Pillow, matplotlib) still do. On an error the temporary file is
    removed and ``path`` keeps its old content.
    """
    path = os.fspath(path)
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp{os.getpid()}{ext}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def missing_folders(path):
    """The folders that ``os.makedirs(path)`` would create, outermost first (absolute paths)."""
    missing = []
    folder = os.path.abspath(path)
    while not os.path.lexists(folder):
        missing.append(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return missing[::-1]


def remove_empty_folders(folders):
    """Undo ``os.makedirs`` for ``folders`` (outermost first, as :func:`missing_folders` gives them).

    Removes them deepest first, and stops at the first that is not empty (or
    is gone): its parents are not empty either.
    """
    for folder in reversed(folders):
        try:
            os.rmdir(folder)
        except OSError:
            return


@contextmanager
def writing(path, error=UserError):
    """Report an ``OSError`` inside the block (no permission, a full disk) as ``error`` naming ``path``."""
    try:
        yield
    except OSError as e:
        raise error(f"{path}: cannot write ({e.strerror or e})") from None


def process_running(pid):
    """Whether process ``pid`` exists on this machine (another user's counts): the owner of a
    temporary file named with its pid may still be writing it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, OSError):  # beyond the pid range: no such process
        return False
    return True
