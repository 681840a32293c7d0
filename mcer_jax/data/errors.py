"""The exception every data-layer check raises."""


class DataError(ValueError):
  """Invalid or unreadable input data; the message names the file and field."""
