"""The one error the course raises for a person's own data: what was wrong, where, and what to do.

A :class:`DataError` is bad input, not a bug: a CSV that cannot be read, a split left without usable rows, too
few rows to hold out valid and test. Its message is written for the person who made the data (the file, the
line, what was expected, what to do), and ``python -m helpers.data`` prints it as one line instead of a
traceback. It is a ``ValueError``, so code that catches bad values catches it too.
"""
from __future__ import annotations


class DataError(ValueError):
    """Bad input data, with a message that names the file (and line) and says what to do."""


class DataFileNotFound(DataError, FileNotFoundError):
    """A data file named in the parameters (CSV, folder) does not exist; also a ``FileNotFoundError``."""
