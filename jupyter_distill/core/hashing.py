"""Content hashes: the keys of the run store.

A key is the SHA-256 of a canonical JSON encoding, so the same prompt, decoding parameters or
teacher spec always map to the same row and a re-run finds what it already paid for.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def content_hash(*parts: Any) -> str:
    """A 32-hex-digit (128-bit) hash of ``parts``; collisions are not a practical concern.

    ``surrogatepass`` keeps hashing total: a lone surrogate (not encodable as UTF-8) gets a hash
    instead of raising; every valid string encodes exactly as plain UTF-8, so keys do not change.
    """
    return hashlib.sha256(canonical_json(list(parts)).encode("utf-8", "surrogatepass")).hexdigest()[:32]


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Full SHA-256 of a file, streamed so multi-GB GGUF files do not load into memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
