"""The one exception type the CLI turns into a readable message instead of a traceback."""


class TritonForgeError(Exception):
    """A problem a person can act on: say what was wrong, with the value, and what to do."""


class ServerUnavailable(TritonForgeError):
    """No server answers at the address (or it cannot be started): the CLI exits 3, not 2."""
