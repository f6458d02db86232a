"""Deterministic UIDs for everything the node derives.

A derived UID is a function of the source UIDs, the model's name and version
and what is being made (``"seg"``, ``"sc"``, ``"sr"``, a frame number...), so
re-running a job or re-delivering its results gives the same UIDs and the
destination replaces instead of duplicating. Format: ``2.25.<integer>``
(PS3.5 B.2: a UUID-derived UID), at most 44 characters.
"""

from __future__ import annotations

import hashlib


def derive_uid(*parts: object) -> str:
    """A ``2.25.`` UID from the SHA-256 of the parts (128 bits, like a UUID)."""
    if not parts:
        raise ValueError("derive_uid needs at least one part")
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    value = int.from_bytes(digest[:16], "big")
    value &= ~(0xF << 76)  # the version nibble of a UUID, as PS3.5 B.2 describes
    value |= 0x8 << 76  # version 8: a custom, name-based UUID (RFC 9562)
    return f"2.25.{value}"
