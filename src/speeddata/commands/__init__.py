"""The ``speeddata`` command line: one module per subcommand, each with
``add_arguments(parser)`` and ``run(args) -> int``; the only layer that knows argparse."""
