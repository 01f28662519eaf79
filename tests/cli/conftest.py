"""Fixtures of the command-line tests."""

from __future__ import annotations

from clitools import own_redis

__all__ = ["own_redis"]
