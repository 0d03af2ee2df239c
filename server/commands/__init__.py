"""Subcommands of `nearcat` beyond serving: each module registers its own subparser."""


class CommandError(Exception):
    """A failure the user can act on; `nearcat` prints it without a traceback and exits 2."""
