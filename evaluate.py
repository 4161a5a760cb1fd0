"""Evaluate a trained run in MuJoCo and print D4RL-normalized scores.

    python evaluate.py RUN_DIR [--episodes 100] [--target-return 3600] [--seed 0] [--json]

With no RUN_DIR: the quickstart — train a small agent on the embedded dataset in data/, then
evaluate it. Same as `decision-rnn evaluate`.
"""

import argparse
import logging
import sys

from decision_rnn.cli import add_evaluate_args, cmd_evaluate

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_evaluate_args(parser)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    sys.exit(cmd_evaluate(parser.parse_args()))
