"""The read model the API's answers imply, to check the consumer's against."""

from __future__ import annotations

from decimal import Decimal
from typing import Any


class ExpectedReadModel:
    """Per customer: orders placed, total of the orders not cancelled, cancelled; and the
    number of events the API committed (one per successful change)."""

    def __init__(self) -> None:
        self.events = 0
        self.stats: dict[str, dict[str, Any]] = {}

    def account(self, path: str, order: dict[str, Any]) -> None:
        """Count the event of a successful POST to ``path`` that answered ``order``."""
        self.events += 1
        stats = self.stats.setdefault(
            order["customer_id"], {"orders": 0, "total_amount": Decimal(0), "cancelled": 0}
        )
        if path == "/orders":
            stats["orders"] += 1
            stats["total_amount"] += Decimal(order["amount"])
        elif path.endswith("/cancel"):
            stats["cancelled"] += 1
            stats["total_amount"] -= Decimal(order["amount"])

    def as_json(self) -> dict[str, Any]:
        """As the read model reads back (amounts as text with two decimals), by customer."""
        return {
            c: {k: (f"{v:.2f}" if isinstance(v, Decimal) else v) for k, v in s.items()}
            for c, s in sorted(self.stats.items())
        }
