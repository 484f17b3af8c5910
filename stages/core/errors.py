"""The project's own error type: bad input, bad params, anything a user can fix."""


class PipelineError(Exception):
    """A problem with the user's data or params, reported as one line naming the file, row or parameter."""


class RLEError(PipelineError):
    """A run-length encoding that does not describe a valid mask."""
