"""The one exception family users catch: every SpeedData error says what is wrong and the fix."""


class SpeedDataError(Exception):
    """Base of SpeedData's own errors (bad config, schema, request, time range...)."""
