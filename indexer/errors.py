"""Domain errors. Each maps to one gRPC status code in `server.servicer`.

Messages are written for the person who reads them: what went wrong and what to do.
"""


class NearcatError(Exception):
    """Base of every error nearcat reports to a caller."""


class InvalidArgument(NearcatError):
    """The request itself is wrong (bad name, bad image, empty list)."""


class NotFound(NearcatError):
    """A named category or reference does not exist."""


class AlreadyExists(NearcatError):
    """A category with this name exists already."""


class FailedPrecondition(NearcatError):
    """The request is valid but the current state forbids it (e.g. no references yet)."""


class DeadlineExceeded(NearcatError):
    """The caller's deadline passed before the work was done; nothing was written."""


class Unavailable(NearcatError):
    """The store cannot be reached; the call can be retried."""
