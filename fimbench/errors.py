"""The one exception type for user mistakes: the CLI prints its message on one line and exits 2."""


class FimbenchError(Exception):
    """A problem the user can fix (bad option, missing data, malformed config, diverged run)."""
