"""The one exception type the CLI turns into a one-line message and a non-zero exit code, and the exit codes."""

EXIT_OK, EXIT_PARTIAL, EXIT_ERROR = 0, 1, 2  # done; some inputs failed, the rest went through; nothing done


class CaptionerError(Exception):
    """A problem the user can fix (bad path, bad input, wrong run directory); `str()` says how."""
