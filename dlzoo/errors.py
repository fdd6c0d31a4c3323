"""The one exception type users see: a one-paragraph message that names the fix, never a traceback."""


class DlzooError(Exception):
    """A user-facing error (bad config value, missing data, diverged run). The CLI prints it and exits 2."""

    def _render_traceback_(self) -> list[str]:
        # IPython (Jupyter, the IPython shell) shows these lines instead of a traceback: the notebook API raises
        # what the CLI prints, and a traceback through Hydra would bury the one paragraph that names the fix.
        return ["error: " + str(self)]
