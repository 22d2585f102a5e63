"""The pivot's error."""

from __future__ import annotations

from ..errors import SpeedDataError


class PivotError(SpeedDataError, ValueError):
    """A pivot that cannot be done; the message says why and what to change."""
