"""Errors a job fails with whose message is written for the client (it names no private data)."""


class JobFailed(RuntimeError):
    """A job cannot go on, for a reason its message states (shown to the client as is)."""
