"""Is the teacher's tokenizer the student's? A fingerprint both sides compute the same way.

On-policy distillation asks the teacher for the log-probability of the student's own token ids,
which only means something when both models cut text into the same tokens with the same ids.
Comparing model names proves nothing (a GGUF may carry another tokenizer, a server may serve
another model), so each side encodes the same fixed probe texts, plain text without special
tokens, and the ids are compared; the vocabulary sizes are compared as well where the teacher
reports one. A teacher vocabulary larger than the student's tokenizer is accepted (converted
models often pad the embedding matrix), a smaller one is not: the student could sample an id the
teacher has never seen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from jupyter_distill.core.hashing import content_hash

#: Plain text covering words, digits, whitespace runs, punctuation, code and several scripts.
PROBE_TEXTS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog. 1234567890 + 3.14159 = ?",
    '  def f(x):\n\treturn {"a": [1, 2, 3]}  # indent, tabs\n\n',
    "Grüße, naïve café — 日本語のテキスト, русский текст, عربى, emoji 🙂!",
    "<b>not a special token</b> http://example.test/path?q=1&r=2 \\n",
)


@dataclass(frozen=True)
class TokenizerFingerprint:
    """How one tokenizer encodes :data:`PROBE_TEXTS`, and its vocabulary size (``None``: unknown)."""

    vocab_size: int | None
    probe_ids: tuple[tuple[int, ...], ...]

    @property
    def digest(self) -> str:
        """A short hash of the probe encodings, for messages and the run card."""
        return content_hash("tokenizer-probe", [list(ids) for ids in self.probe_ids])[:16]


def fingerprint(encode: Callable[[str], list[int]], vocab_size: int | None) -> TokenizerFingerprint:
    """Encode every probe text with ``encode`` (plain text: no BOS, no special-token parsing)."""
    return TokenizerFingerprint(vocab_size, tuple(tuple(int(i) for i in encode(text)) for text in PROBE_TEXTS))


def mismatch(student: TokenizerFingerprint, teacher: TokenizerFingerprint) -> str | None:
    """Why the teacher cannot score the student's tokens, or ``None`` when the tokenizers agree."""
    for text, mine, theirs in zip(PROBE_TEXTS, student.probe_ids, teacher.probe_ids, strict=True):
        if mine != theirs:
            at = next(
                (i for i, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b), min(len(mine), len(theirs))
            )
            return (
                f"the tokenizers differ: the probe text {text[:40]!r}... encodes to {len(mine)} student tokens and "
                f"{len(theirs)} teacher tokens, first different at token {at} (student probe hash {student.digest}, "
                f"teacher {teacher.digest})"
            )
    if student.vocab_size is not None and teacher.vocab_size is not None and teacher.vocab_size < student.vocab_size:
        return (
            f"the teacher's vocabulary has {teacher.vocab_size} tokens, fewer than the student's {student.vocab_size}, "
            "so the student can sample ids the teacher cannot score"
        )
    return None


__all__ = ["PROBE_TEXTS", "TokenizerFingerprint", "fingerprint", "mismatch"]
