"""Files of a run directory, written so that a directory received from someone else
cannot redirect them.

A run directory (``aniso-gp fit``, ``compare``, ``demo``; layout in
:mod:`aniso_gp.report`) may be copied, unpacked from an archive or shared. Whatever
it holds, aniso-gp

* never writes through a symbolic link: files are written to a fresh temporary
  sibling (created with ``O_EXCL``, so a planted ``report.html.tmp`` link is never
  opened) and renamed over the target, which replaces a link instead of following
  it; a linked subdirectory (``figures -> /elsewhere``) is refused;
* uses a name read from a file (a fit name in ``report.json``) as a path only after
  :func:`check_name` accepted it (no separators, no ``..``, no leading dot);
* replaces or deletes a directory only if it holds :data:`MARKER`, the file that
  aniso-gp writes into every run directory it creates (``--force`` never deletes a
  directory aniso-gp did not write).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

#: Written into every run directory aniso-gp creates; ``--force`` needs it.
MARKER = ".aniso-gp-run"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class UnsafeRunDirectoryError(PermissionError):
    """A run directory holds a symbolic link or a name that would lead outside it."""


def check_name(name, what: str) -> str:
    """``name`` if it can be one path component inside a run directory.

    Letters, digits, ``_``, ``.``, ``-``; at most 64 characters; not starting with a
    dot (so neither ``..`` nor hidden files).
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UnsafeRunDirectoryError(
            f"{what} {name!r} is not a valid name (letters, digits, '_', '.', '-'; at most "
            "64 characters; not starting with '.'): it is not used as a path")
    return name


def _refuse_link(path: Path) -> None:
    if path.is_symlink():
        raise UnsafeRunDirectoryError(
            f"{str(path)!r} is a symbolic link; aniso-gp does not write through links in a "
            "run directory (remove the link, or write the run elsewhere)")


def subdir(root, *names: str) -> Path:
    """``root/names[0]/names[1]/...``, created if missing; no component may be a link."""
    path = Path(root)
    for name in names:
        path = path / check_name(name, "directory")
        _refuse_link(path)
        path.mkdir(exist_ok=True)
        if not path.is_dir():
            raise NotADirectoryError(f"{str(path)!r} exists and is not a directory")
    return path


def write_file(path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` atomically without following any link.

    The bytes go to a new temporary file in the same directory (``mkstemp``:
    ``O_CREAT | O_EXCL``), which then replaces ``path`` by ``os.replace``; a link at
    ``path`` is replaced, not followed, and a reader never sees half a file.
    """
    path = Path(path)
    _refuse_link(path.parent)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def create(path, record: dict | None = None) -> Path:
    """Make a new run directory ``path`` (it must not exist) holding :data:`MARKER`,
    with ``record`` (JSON) in it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=False)
    write_file(path / MARKER, json.dumps(record or {}, indent=2))
    return path


def is_run(path) -> bool:
    """Whether ``path`` is a directory (not a link) that aniso-gp created."""
    path = Path(path)
    return path.is_dir() and not path.is_symlink() and (path / MARKER).is_file()


def record(path) -> dict:
    """The JSON record stored in the marker of run directory ``path``."""
    marker = Path(path) / MARKER
    try:
        data = json.loads(marker.read_text(encoding="utf-8") or "{}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(marker)!r} cannot be read as JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{str(marker)!r} does not hold a JSON object")
    return data


def remove(path, why: str) -> None:
    """Delete run directory ``path``; refuses one that aniso-gp did not create."""
    path = Path(path)
    if not is_run(path):
        raise FileExistsError(
            f"{str(path)!r} exists and was not written by aniso-gp (it has no {MARKER} "
            f"file), so it is not deleted {why}; remove it yourself or choose another path")
    shutil.rmtree(path)
