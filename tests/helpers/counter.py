"""The smallest resumable component: anything with state_dict/load_state_dict is checkpointable."""

from __future__ import annotations


class Counter:
    """Stands in for a sampler position (samples consumed) in library-level tests."""

    def __init__(self) -> None:
        self.consumed = 0

    def state_dict(self) -> dict:
        return {"consumed": self.consumed}

    def load_state_dict(self, sd: dict) -> None:
        self.consumed = sd["consumed"]
