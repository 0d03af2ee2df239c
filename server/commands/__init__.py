"""Subcommands of `nearcat` beyond serving: each module registers its own subparser."""
