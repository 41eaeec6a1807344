"""A teacher's spend and its ``max_cost`` budget, shared by every event loop that uses it.

Why a reservation and not a running total: requests run concurrently, so checking the spend
alone would let ``concurrency`` requests pass the limit together. Each request reserves its
worst-case cost before it is sent and settles the real cost when it returns.
"""

from __future__ import annotations

import threading
from typing import Any

from jupyter_distill.core.errors import BudgetExceeded
from jupyter_distill.teachers.base import messages_chars


class SpendBudget:
    """Money spent on one teacher, what is reserved in flight, and the limit (None: none)."""

    def __init__(self, max_cost: float | None, spec: str):
        self.max_cost = max_cost
        self.spec = spec
        self.spent = 0.0  # USD
        self.reserved = 0.0
        self._lock = threading.Lock()

    def reserve(self, messages: list[dict[str, Any]], n: int, max_tokens: int, prices: tuple[float, float]) -> float:
        """Reserve the worst-case cost of one request, or raise ``BudgetExceeded`` before sending it.

        The worst case counts every prompt character as half a token and all ``n x max_tokens``
        completion tokens, so the spend cannot pass ``max_cost`` on a request we let through.
        """
        price_in, price_out = prices
        prompt_tokens = messages_chars(messages) // 2 + 8 * len(messages)
        estimate = (prompt_tokens * price_in + n * max_tokens * price_out) / 1e6
        with self._lock:
            if self.max_cost is not None and self.spent + self.reserved + estimate > self.max_cost + 1e-12:
                raise BudgetExceeded(
                    f"max_cost={self.max_cost} USD would be exceeded by the next request to {self.spec}: spent "
                    f"{self.spent:.6f}, in flight up to {self.reserved:.6f}, next request up to {estimate:.6f} USD. "
                    "Fix: raise max_cost, lower n_samples or max_tokens, or pick a cheaper teacher; samples already "
                    "paid for are kept and a re-run requests only the missing ones.",
                    field="max_cost",
                    value=self.max_cost,
                    fix="raise max_cost",
                )
            self.reserved += estimate
        return estimate

    def reserve_tokens(self, prompt_tokens: int, completion_tokens: int, prices: tuple[float, float]) -> float:
        """Reserve the cost of a request whose token counts are known (scoring given token ids)."""
        estimate = (prompt_tokens * prices[0] + completion_tokens * prices[1]) / 1e6
        with self._lock:
            if self.max_cost is not None and self.spent + self.reserved + estimate > self.max_cost + 1e-12:
                raise BudgetExceeded(
                    f"max_cost={self.max_cost} USD would be exceeded by the next scoring request to {self.spec}: "
                    f"spent {self.spent:.6f}, in flight up to {self.reserved:.6f}, next request {estimate:.6f} USD "
                    f"({prompt_tokens} tokens scored). Fix: raise max_cost, lower steps, jbond_n or "
                    "jbond_max_new_tokens, or use a local teacher.",
                    field="max_cost",
                    value=self.max_cost,
                    fix="raise max_cost",
                )
            self.reserved += estimate
        return estimate

    def settle(self, reserved: float, cost: float) -> None:
        """Release a reservation and count what the request really cost (0 for a failed attempt)."""
        with self._lock:
            self.reserved = max(0.0, self.reserved - reserved)
            self.spent += cost

    def add(self, cost: float) -> None:
        """Count money spent outside a reservation (a provider batch's results)."""
        with self._lock:
            self.spent += cost
