"""The one error type for a user's mistake: a bad file, a bad option, a missing dataset.

The command line prints ``error: <message>`` for it and exits with status 2,
without a traceback; the message names the file or option and the problem.
Library callers can catch the narrower subclasses (``AnnotationError``,
``ImageError``, ``WeightFileError``, ``PriorFileError``, ...).
"""


class UserError(ValueError):
    """A problem with the user's input, reported as a message (exit status 2 from the CLI)."""
