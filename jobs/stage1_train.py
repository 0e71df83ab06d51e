"""Entry point: stage 1 on Ray Train. Same code path as `lnr-dist stage1 ...`.

python jobs/stage1_train.py --config configs/mini.yaml stage1.epochs=4
"""

import sys

from lnr_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["stage1", *sys.argv[1:]]))
