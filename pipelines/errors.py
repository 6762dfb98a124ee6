"""The one exception type for user mistakes: the CLI prints it as a single line, no traceback."""


class UserError(Exception):
    """Bad user input (config, paths, data); the message says what, where and what to do."""
