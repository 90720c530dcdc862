"""Data: loaders (I/O), presets and formatters (pure), tokenization and packing (torch).

Nothing is imported here so that `data.presets` stays importable without heavy packages.
"""


class DataError(ValueError):
    """The job's data cannot be used (a file that cannot be read, a malformed row, a split
    left empty): the report says so with reason DataError, not a generic trainer failure."""
