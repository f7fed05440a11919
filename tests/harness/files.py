"""Small text and file helpers the server harnesses share."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path


class ShippedConfigError(RuntimeError):
    """A shipped config file no longer has what a harness substitutes in it."""


def replace_once(text: str, old: str, new: str, *, where: str) -> str:
    """``text`` with ``old``, which must occur exactly once (in the file ``where``), replaced."""
    if text.count(old) != 1:
        raise ShippedConfigError(f"{where}: expected {old!r} exactly once")
    return text.replace(old, new)


def sub_once(text: str, pattern: str, repl: Any, *, where: str) -> str:
    """re.sub of a pattern that must match exactly once in ``text`` (the file ``where``)."""
    new, count = re.subn(pattern, repl, text)
    if count != 1:
        raise ShippedConfigError(f"{where}: expected one match for {pattern!r}, got {count}")
    return new


def tails(paths: Iterable[Path], lines: int, *, empty: str) -> str:
    """The last ``lines`` lines of each existing file, headed by its path (for failures)."""
    parts = []
    for path in paths:
        if path.exists():
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path} (last {len(tail)} lines) ---\n" + "\n".join(tail))
    return "\n".join(parts) or empty


def size(path: Path) -> int:
    """The file's length, 0 while it does not exist: where to read on from (read_from)."""
    return path.stat().st_size if path.exists() else 0


def read_from(path: Path, offset: int) -> str:
    """What the file holds past ``offset`` (a server's log since a start or a test), or ""."""
    try:
        with path.open("rb") as file:
            file.seek(offset)
            return file.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
