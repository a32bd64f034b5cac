"""User-facing errors: one line that names the field, path or tensor at fault."""


class UserError(Exception):
    """A mistake in the user's input (config, paths, data) rather than a bug.

    Entry points catch it and exit non-zero with the message alone, no traceback.
    """
