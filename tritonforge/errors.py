"""The one exception type the CLI turns into a readable message instead of a traceback."""


class TritonForgeError(Exception):
    """A problem a person can act on: say what was wrong, with the value, and what to do."""
