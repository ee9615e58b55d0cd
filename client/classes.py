"""Class lists: one string ``"cat; sofa, couch; traffic cone"`` or a list of names -> list of names.

Classes are separated by ``;`` because a comma inside one class name already means something: it
lists synonyms of that class (``"sofa, couch"`` is one class, embedded from both words). Blanks
around names are dropped, and so are empty pieces of a string (a trailing ``;``). Whether a name
is acceptable (not only commas, not too long, not too many classes) is the server's decision; the
client only refuses an empty list.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

CLASS_SEPARATOR = ";"  # between classes; "," separates synonyms inside one class
COMMENT = "#"  # starts a comment line in a classes file


def parse_classes(classes: str | Sequence[str]) -> list[str]:
    """``"cat; sofa, couch"`` -> ``["cat", "sofa, couch"]``; a list is stripped and kept in order.

    Raises ValueError for an empty class list or a list item that is not a string.
    """
    if isinstance(classes, str):
        names = [part.strip() for part in classes.split(CLASS_SEPARATOR)]
        names = [name for name in names if name]
    elif isinstance(classes, bytes | bytearray):
        raise ValueError("classes must be text or a list of names, got bytes")
    else:
        names = []
        for item in classes:
            if not isinstance(item, str):
                raise ValueError(f"class name {item!r} is not a string")
            names.append(item.strip())
    if not names:
        raise ValueError(
            "the class list is empty: give at least one class name "
            f"(separate classes with '{CLASS_SEPARATOR}'; a comma lists synonyms of one class)"
        )
    return names


def read_classes_file(path: str | os.PathLike[str]) -> list[str]:
    """Class names from a text file: one class per line (or several separated by ``;``).

    Blank lines and lines starting with ``#`` are skipped. Raises OSError if the file cannot be
    read, ValueError if it names no class.
    """
    with open(path, encoding="utf-8") as handle:
        lines = [line.strip() for line in handle]
    text = CLASS_SEPARATOR.join(line for line in lines if line and not line.startswith(COMMENT))
    try:
        return parse_classes(text)
    except ValueError:
        raise ValueError(f"classes file {os.fspath(path)} names no class") from None
