"""The one exception family users catch: every SpeedData error says what is wrong and the fix."""


class SpeedDataError(Exception):
    """Base of SpeedData's own errors (bad config, schema, request, time range...)."""


class ReadError(SpeedDataError, ValueError):
    """A read that cannot be done as asked (a time, a range, a channel, a signal); the
    message says what is available."""
