"""The one exception type users see: a one-paragraph message that names the fix, never a traceback."""


class DlzooError(Exception):
    """A user-facing error (bad config value, missing data, diverged run). The CLI prints it and exits 2."""
