"""Evaluate a trained run in MuJoCo and print D4RL-normalized scores.

    python evaluate.py RUN_DIR [--episodes 100] [--target-return 3600] [--seed 0] [--json]

With no RUN_DIR: the quickstart — train a small agent on the embedded dataset in data/, then
evaluate it. Same as `decision-rnn evaluate` (the same arguments and error messages).
"""

import sys

from decision_rnn.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
