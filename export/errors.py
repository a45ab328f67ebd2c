"""The export's error type: a user-facing, one-line reason (the CLI prints it and exits non-zero)."""


class ExportError(ValueError):
    """An export that cannot be done as asked; nothing was written to the bundle."""
