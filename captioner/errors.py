"""The one exception type the CLI turns into a one-line message and a non-zero exit code."""


class CaptionerError(Exception):
    """A problem the user can fix (bad path, bad input, wrong run directory); `str()` says how."""
