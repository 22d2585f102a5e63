"""The fault suite (issue 10): hostile inputs the relay must survive, each case bounded in
time. Part of ``make test``."""
