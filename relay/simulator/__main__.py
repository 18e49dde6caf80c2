"""``python -m relay.simulator`` does what ``relay simulate`` does (handy while hacking on the simulator alone)."""

import argparse
import sys

from relay.simulator import cli

parser = argparse.ArgumentParser(
    prog="python -m relay.simulator", description=cli.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
)
cli.add_arguments(parser)
sys.exit(cli.main(parser.parse_args()))
