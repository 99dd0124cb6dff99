"""One exception type for problems a user can fix, so entry points can print one clear line."""


class GptlabError(Exception):
    """A problem with the user's input or configuration; the message says what and how to fix it."""


class ConfigError(GptlabError, ValueError):
    """A configuration value is wrong."""


class DataError(GptlabError, ValueError):
    """A data source is missing, empty, or too short for the requested windows."""


class CheckpointError(GptlabError, ValueError):
    """A checkpoint or weight file does not match what the run expects."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none), for one-line errors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
