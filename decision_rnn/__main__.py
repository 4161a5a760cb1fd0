"""`python -m decision_rnn`: the `decision-rnn` command line, also as torchrun's entry point
(`torchrun --standalone --nproc_per_node N -m decision_rnn train ...`)."""

import sys

from torch.distributed.elastic.multiprocessing.errors import record

from .cli import main

if __name__ == "__main__":
    # under torchrun, `record` writes a failing rank's traceback where torchrun's failure summary shows it
    sys.exit(record(main)())
