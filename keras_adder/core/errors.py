"""The project's one error type."""


class KerasAdderError(Exception):
    """A problem with what the user gave us (a file, a flag, a request).

    The message is the whole story: the commands print it as one line on stderr and
    exit with code 2, so it must name the file or value and what is wrong with it.
    """
