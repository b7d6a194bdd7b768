"""`python -m reroute ...` (and `accelerate launch -m reroute eval ...`): the `reroute` command line."""

from reroute.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
