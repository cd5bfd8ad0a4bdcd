"""The one exception type for a user's mistake: the CLI prints its message and exits with 2."""


class UserError(Exception):
    """Bad input or usage. The message is one line naming the file, the field and what was expected."""
