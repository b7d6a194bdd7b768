"""The one error type for bad input on the command line (`reroute.cli.main` reports it)."""


class UserError(Exception):
    """A problem with what the user asked for (a missing path, a bad value, a missing extra):
    ``reroute.cli.main`` prints ``reroute <command>: <message>`` on one line and exits with
    status 2, without a traceback."""
