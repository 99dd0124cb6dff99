"""One exception type for problems a user can fix, so entry points can print one clear line."""


class GptlabError(Exception):
    """A problem with the user's input or configuration; the message says what and how to fix it."""


class ConfigError(GptlabError, ValueError):
    """A configuration value is wrong."""


class DataError(GptlabError, ValueError):
    """A data source is missing, empty, or too short for the requested windows."""


class CheckpointError(GptlabError, ValueError):
    """A checkpoint or weight file does not match what the run expects."""


def first_line(reason: object, limit: int = 300) -> str:
    """An exception's message as one short line, for one-line errors: its first line with runs of
    whitespace as one space (its type name if it has no message), cut to ``limit`` characters."""
    lines = [line for line in str(reason).splitlines() if line.strip()]
    text = " ".join(lines[0].split()) if lines else type(reason).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
