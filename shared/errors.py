"""Errors a user can act on: they fail the job with their message and are never retried."""


class UnprocessableInput(ValueError):
    """The input can never be processed as asked (the message is shown to the user)."""
