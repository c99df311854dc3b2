"""The one exception type the CLI turns into a one-line message (no traceback) and a non-zero exit."""


class UserError(Exception):
    """Bad input from the user: a missing file, a malformed checkpoint, an unknown config key.

    The message must name the file (or option) and the problem in one line.
    """
