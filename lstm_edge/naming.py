"""The one place that turns names into C identifiers."""

from __future__ import annotations

import re

from .errors import LstmEdgeError

C_KEYWORDS = frozenset("""auto break case char const continue default do double else enum extern float for goto
if inline int long register restrict return short signed sizeof static struct switch typedef union unsigned
void volatile while _Bool _Complex _Imaginary""".split())
_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
MAX_PREFIX = 40  # leaves room for the longest suffix within C99's 63 significant characters


def model_prefix(name: str) -> str:
    """Validate a user-chosen model name used as the C prefix of every exported symbol."""
    if not _IDENTIFIER.match(name) or name in C_KEYWORDS or len(name) > MAX_PREFIX:
        raise LstmEdgeError(f"model name {name!r} is not usable as a C prefix: use letters, digits and _, "
                            f"starting with a letter, at most {MAX_PREFIX} characters, not a C keyword")
    return name


def default_prefix(text: str) -> str:
    """Derive a valid prefix from a folder or file name (e.g. 'build/my-kws.v2' -> 'my_kws_v2')."""
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", text).strip("_")
    cleaned = re.sub(r"_+", "_", cleaned)
    if not cleaned or not cleaned[0].isalpha():
        cleaned = "model_" + cleaned
    cleaned = cleaned[:MAX_PREFIX].rstrip("_")
    return cleaned + "_model" if cleaned in C_KEYWORDS else cleaned


def c_identifier(text: str) -> str:
    """A safe local identifier from an arbitrary graph name (for comments and static arrays)."""
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", text) or "x"
    return cleaned if cleaned[0].isalpha() else "n_" + cleaned
