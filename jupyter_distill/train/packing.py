"""Padding-free, prefix-sharing packing of preference pairs for one batched forward.

A DPO/BOND pair is ``(prompt, chosen, rejected)``. Trainers such as TRL run it as two padded
sequences, ``prompt+chosen`` and ``prompt+rejected``: the prompt is computed twice and every row
is padded to the longest in the batch. Here one pair becomes one *tree*::

    [ prompt | chosen | rejected ]       positions 0..P-1 | P..P+C-1 | P..P+R-1

with an attention mask in which rejected tokens see the prompt and earlier rejected tokens but
never the chosen ones. Every token sees exactly the context it would see in its own sequence, so
the hidden states equal the unpacked ones (up to kernel rounding), while the prompt runs once:
at 128 prompt + 128 + 128 response tokens that is 384 tokens instead of 512, a quarter of the
step's matrix work gone. Several trees are then packed into a row (first-fit decreasing up to
``row_tokens``), with a block-diagonal mask between them, so short pairs fill the gaps that
padding would waste; rows are padded only up to a multiple of ``pad_multiple`` (kernel alignment).

The predicting positions are computed here too: chosen token ``k`` is predicted by the hidden
state just before it (the last prompt token for ``k = 0``); rejected token ``0`` is predicted by
the same last prompt token, and rejected token ``k > 0`` by rejected token ``k − 1``.

Everything is CPU-side index arithmetic on Python ints and small tensors; the dense masks are
built on the target device from per-token ids (:func:`tree_attention_mask`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from jupyter_distill.core.errors import TrainingError

# Branch ids of a tree's tokens; padding gets its own branch and its own tree id.
BRANCH_PROMPT, BRANCH_CHOSEN, BRANCH_REJECTED, BRANCH_PAD = 0, 1, 2, 3


class PairLike(Protocol):
    """What packing reads from a pair; :class:`jupyter_distill.train.engines.TokenizedPair` fits.

    ``rejected_ids`` empty or ``None`` means the prompt has only a chosen response.
    """

    prompt_ids: Sequence[int]
    chosen_ids: Sequence[int]
    rejected_ids: Sequence[int] | None


@dataclass(frozen=True)
class PairTokens:
    """A minimal :class:`PairLike` for tests and benchmarks."""

    prompt_ids: Sequence[int]
    chosen_ids: Sequence[int]
    rejected_ids: Sequence[int] | None = None


def tree_tokens(pair: PairLike) -> int:
    """Tokens a pair occupies as one prefix-sharing tree: prompt + chosen + rejected."""
    return len(pair.prompt_ids) + len(pair.chosen_ids) + len(pair.rejected_ids or ())


@dataclass
class PackedBatch:
    """One packed batch: model inputs plus where to read each response token's prediction.

    ``*_pos`` index the flattened ``(rows * row_len)`` hidden states; ``*_pair`` say which pair (in
    the caller's order) each response token belongs to, for per-sequence sums.
    """

    input_ids: Tensor  # (R, L) long
    position_ids: Tensor  # (R, L) long
    tree_ids: Tensor  # (R, L) long: which tree (pair) a token belongs to; pads get unique negative ids
    branch_ids: Tensor  # (R, L) long: BRANCH_* of each token
    chosen_pos: Tensor  # (Nc,) long
    chosen_tgt: Tensor  # (Nc,) long
    chosen_pair: Tensor  # (Nc,) long
    rejected_pos: Tensor  # (Nr,) long
    rejected_tgt: Tensor  # (Nr,) long
    rejected_pair: Tensor  # (Nr,) long
    chosen_len: Tensor  # (B,) long
    rejected_len: Tensor  # (B,) long (0 where no rejected)
    has_rejected: Tensor  # (B,) bool
    n_pairs: int
    real_tokens: int  # tokens that are not padding

    @property
    def rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def row_len(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def padded_tokens(self) -> int:
        return self.rows * self.row_len

    def to(self, device: torch.device | str) -> PackedBatch:
        """A copy with every tensor on ``device`` (non-blocking where the source is pinned)."""
        moved = {
            name: (value.to(device, non_blocking=True) if isinstance(value, Tensor) else value)
            for name, value in self.__dict__.items()
        }
        return PackedBatch(**moved)


def _rejected(pair: PairLike) -> list[int] | None:
    """The rejected ids, or None when the pair has none (``None`` and ``[]`` both mean none)."""
    return list(pair.rejected_ids) if pair.rejected_ids else None


def _validate(pairs: Sequence[PairLike]) -> None:
    if not pairs:
        raise TrainingError(
            "packing: got no pairs; a batch needs at least one (prompt, chosen) pair.",
            field="pairs",
            value=0,
            fix="pass a non-empty batch",
        )
    for i, pair in enumerate(pairs):
        if len(pair.prompt_ids) < 1:
            raise TrainingError(
                f"packing: pair {i} has an empty prompt; the first response token needs a token to be predicted from.",
                field="prompt_ids",
                value=i,
                fix="apply the chat template (it always yields prompt tokens) or prepend a BOS token",
            )
        if len(pair.chosen_ids) < 1:
            raise TrainingError(
                f"packing: pair {i} has an empty chosen response.",
                field="chosen_ids",
                value=i,
                fix="drop pairs whose chosen response tokenises to nothing",
            )


def assign_rows(lengths: Sequence[int], row_tokens: int) -> list[list[int]]:
    """First-fit decreasing: indices of ``lengths`` grouped into rows of at most ``row_tokens``.

    FFD uses at most 11/9·OPT + 1 rows, and is deterministic for a given batch.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    fill: list[int] = []
    for i in order:
        for r, used in enumerate(fill):
            if used + lengths[i] <= row_tokens:
                rows[r].append(i)
                fill[r] += lengths[i]
                break
        else:
            rows.append([i])
            fill.append(lengths[i])
    return rows


def _round_up(value: int, multiple: int) -> int:
    multiple = max(1, multiple)
    return -(-value // multiple) * multiple


def _lt(values: list[int]) -> Tensor:
    return torch.tensor(values, dtype=torch.long)


def pack_pairs(
    pairs: Sequence[PairLike],
    *,
    row_tokens: int | None = None,
    pad_multiple: int = 64,
    pad_token_id: int = 0,
) -> PackedBatch:
    """Pack ``pairs`` as prefix-sharing trees into as few rows as fit ``row_tokens`` each.

    Args:
        pairs: the batch, in the caller's order; per-token outputs come back grouped by pair in
            this order (all of pair 0's chosen tokens, then pair 1's, ...).
        row_tokens: capacity of one row; ``None`` = the longest tree (one tree per row unless two
            short ones fit together). Larger rows pack more but make dense-mask attention cost
            grow with the row length, so keep it near 1-2k tokens on SDPA.
        pad_multiple: rows are padded to a multiple of this (GPU kernels like multiples of 64, and
            fewer distinct shapes mean fewer ``torch.compile`` recompilations).
        pad_token_id: id written into padding (never read by the loss).
    """
    _validate(pairs)
    lengths = [tree_tokens(p) for p in pairs]
    capacity = row_tokens if row_tokens is not None else max(lengths)
    if capacity < max(lengths):
        raise TrainingError(
            f"pack_pairs: row_tokens={row_tokens} is smaller than the longest pair ({max(lengths)} tokens).",
            field="row_tokens",
            value=row_tokens,
            fix="raise row_tokens (or leave it None: it then fits the longest pair)",
        )
    rows = assign_rows(lengths, capacity)
    row_len = _round_up(max(sum(lengths[i] for i in row) for row in rows), pad_multiple)
    n_rows = len(rows)
    input_ids = torch.full((n_rows, row_len), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((n_rows, row_len), dtype=torch.long)
    branch_ids = torch.full((n_rows, row_len), BRANCH_PAD, dtype=torch.long)
    # Padding: one pseudo-tree per pad token (negative ids) so each pad attends to itself only and
    # no attention row is fully masked (that gives NaN in some kernels).
    tree_ids = -1 - torch.arange(n_rows * row_len, dtype=torch.long).view(n_rows, row_len)

    start: dict[int, int] = {}  # pair -> flat index of its first token
    for r, row in enumerate(rows):
        cursor = 0
        for b in row:
            pair = pairs[b]
            p_len, c_len = len(pair.prompt_ids), len(pair.chosen_ids)
            rejected = _rejected(pair) or []
            end = cursor + lengths[b]
            input_ids[r, cursor:end] = _lt([*pair.prompt_ids, *pair.chosen_ids, *rejected])
            position_ids[r, cursor : cursor + p_len + c_len] = torch.arange(p_len + c_len)
            position_ids[r, cursor + p_len + c_len : end] = torch.arange(p_len, p_len + len(rejected))
            tree_ids[r, cursor:end] = b
            branch_ids[r, cursor : cursor + p_len] = BRANCH_PROMPT
            branch_ids[r, cursor + p_len : cursor + p_len + c_len] = BRANCH_CHOSEN
            branch_ids[r, cursor + p_len + c_len : end] = BRANCH_REJECTED
            start[b] = r * row_len + cursor
            cursor = end

    idx: dict[str, list[int]] = {k: [] for k in ("cp", "ct", "cb", "rp", "rt", "rb")}
    for b, pair in enumerate(pairs):
        p_len, c_len = len(pair.prompt_ids), len(pair.chosen_ids)
        last_prompt = start[b] + p_len - 1
        # chosen token k sits right after position last_prompt + k, which predicts it
        idx["cp"].extend(range(last_prompt, last_prompt + c_len))
        idx["ct"].extend(pair.chosen_ids)
        idx["cb"].extend([b] * c_len)
        rejected = _rejected(pair)
        if rejected is not None:
            rej_start = start[b] + p_len + c_len
            # rejected token 0 is predicted by the last prompt token, token k by rejected token k-1
            idx["rp"].append(last_prompt)
            idx["rp"].extend(range(rej_start, rej_start + len(rejected) - 1))
            idx["rt"].extend(rejected)
            idx["rb"].extend([b] * len(rejected))
    return _batch(pairs, input_ids, position_ids, tree_ids, branch_ids, idx, real_tokens=sum(lengths))


def pad_sequences(pairs: Sequence[PairLike], *, pad_multiple: int = 64, pad_token_id: int = 0) -> PackedBatch:
    """The plain layout: ``prompt+chosen`` and ``prompt+rejected`` as separate right-padded rows.

    Right padding with a causal model needs **no attention mask at all**: a real token only
    attends to earlier positions, which are never padding, so attention can use the fused causal
    kernels (flash). Used where a custom mask is not possible (an Unsloth-patched model,
    ``flash_attention_2``) or when it is faster. ``tree_ids``/``branch_ids`` describe the layout
    for completeness (each row its own tree) but the engine passes no mask for it.
    """
    _validate(pairs)
    seqs: list[list[int]] = []
    owners: list[tuple[int, str]] = []
    for b, pair in enumerate(pairs):
        seqs.append([*pair.prompt_ids, *pair.chosen_ids])
        owners.append((b, "c"))
        rejected = _rejected(pair)
        if rejected is not None:
            seqs.append([*pair.prompt_ids, *rejected])
            owners.append((b, "r"))
    row_len = _round_up(max(len(s) for s in seqs), pad_multiple)
    n_rows = len(seqs)
    input_ids = torch.full((n_rows, row_len), pad_token_id, dtype=torch.long)
    position_ids = torch.arange(row_len, dtype=torch.long).repeat(n_rows, 1)
    tree_ids = torch.arange(n_rows, dtype=torch.long)[:, None].repeat(1, row_len)
    branch_ids = torch.full((n_rows, row_len), BRANCH_PAD, dtype=torch.long)
    idx: dict[str, list[int]] = {k: [] for k in ("cp", "ct", "cb", "rp", "rt", "rb")}
    for r, (seq, (b, which)) in enumerate(zip(seqs, owners, strict=True)):
        p_len = len(pairs[b].prompt_ids)
        input_ids[r, : len(seq)] = _lt(seq)
        branch_ids[r, :p_len] = BRANCH_PROMPT
        branch_ids[r, p_len : len(seq)] = BRANCH_CHOSEN if which == "c" else BRANCH_REJECTED
        response = seq[p_len:]
        first = r * row_len + p_len - 1
        idx[which + "p"].extend(range(first, first + len(response)))
        idx[which + "t"].extend(response)
        idx[which + "b"].extend([b] * len(response))
    return _batch(pairs, input_ids, position_ids, tree_ids, branch_ids, idx, real_tokens=sum(map(len, seqs)))


def _batch(
    pairs: Sequence[PairLike],
    input_ids: Tensor,
    position_ids: Tensor,
    tree_ids: Tensor,
    branch_ids: Tensor,
    idx: dict[str, list[int]],
    *,
    real_tokens: int,
) -> PackedBatch:
    return PackedBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        tree_ids=tree_ids,
        branch_ids=branch_ids,
        chosen_pos=_lt(idx["cp"]),
        chosen_tgt=_lt(idx["ct"]),
        chosen_pair=_lt(idx["cb"]),
        rejected_pos=_lt(idx["rp"]),
        rejected_tgt=_lt(idx["rt"]),
        rejected_pair=_lt(idx["rb"]),
        chosen_len=_lt([len(p.chosen_ids) for p in pairs]),
        rejected_len=_lt([len(_rejected(p) or ()) for p in pairs]),
        has_rejected=torch.tensor([_rejected(p) is not None for p in pairs], dtype=torch.bool),
        n_pairs=len(pairs),
        real_tokens=real_tokens,
    )


def tree_attention_mask(tree_ids: Tensor, branch_ids: Tensor) -> Tensor:
    """``(R, 1, L, L)`` bool mask, True = may attend: causal, same tree, never chosen <-> rejected.

    Query ``i`` sees key ``j`` iff ``j <= i`` in the row, both belong to the same tree, and ``j`` is
    a prompt token or in the same branch as ``i``. Built on ``tree_ids``' device, so pass tensors
    already on the GPU (the mask is ``L²`` per row; the ids are only ``L``).
    """
    length = tree_ids.shape[-1]
    idx = torch.arange(length, device=tree_ids.device)
    causal = idx[None, :] <= idx[:, None]  # (L, L): key j <= query i
    same_tree = tree_ids[:, :, None] == tree_ids[:, None, :]
    key_branch = branch_ids[:, None, :]
    branch_ok = (key_branch == BRANCH_PROMPT) | (key_branch == branch_ids[:, :, None])
    return (causal[None] & same_tree & branch_ok)[:, None]


def flex_tree_block_mask(tree_ids: Tensor, branch_ids: Tensor) -> object:
    """The same mask as a ``torch.nn.attention.flex_attention.BlockMask`` (block-sparse).

    With ``attn_implementation="flex_attention"`` attention then skips every 128x128 block that is
    fully masked, so its cost grows with the trees' own lengths, not with the row length.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    n_rows, length = tree_ids.shape

    def mask_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        kb = branch_ids[b, kv]
        return (kv <= q) & (tree_ids[b, q] == tree_ids[b, kv]) & ((kb == BRANCH_PROMPT) | (kb == branch_ids[b, q]))

    return create_block_mask(mask_mod, B=n_rows, H=None, Q_LEN=length, KV_LEN=length, device=tree_ids.device)


__all__ = [
    "BRANCH_CHOSEN",
    "BRANCH_PAD",
    "BRANCH_PROMPT",
    "BRANCH_REJECTED",
    "PackedBatch",
    "PairLike",
    "PairTokens",
    "assign_rows",
    "flex_tree_block_mask",
    "pack_pairs",
    "pad_sequences",
    "tree_attention_mask",
    "tree_tokens",
]
