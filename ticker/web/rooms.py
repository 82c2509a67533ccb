"""Room names (pure logic): one room per instrument token and mode."""

from __future__ import annotations


def room_for(token: int, mode: str) -> str:
    return f"{mode}:{token}"
