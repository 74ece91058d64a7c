"""One module per ``mgen`` subcommand, each with ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``."""

NAMES = ("sample", "train", "eval", "convert", "info", "bench")
