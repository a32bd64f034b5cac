"""User-facing errors: one line that names the field, path or tensor at fault."""


class UserError(Exception):
    """A mistake in the user's input (config, paths, data) rather than a bug.

    Entry points catch it and exit non-zero with the message alone, no traceback.
    """


class BadRecordError(UserError):
    """One record cannot be read or decoded (`where` names it, `reason` says why).

    Training may replace such a record (``config.data.on_bad_record="skip"``); any other
    UserError still stops the run.
    """

    def __init__(self, message: str, where: str, reason: str):
        super().__init__(message)
        self.where = where
        self.reason = reason
