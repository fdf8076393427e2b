"""The one exception type for bad input: the CLI prints its message as one line and exits 2."""


class UserError(Exception):
    """Bad input a user can fix. The message says what is wrong, where, and what to do."""
