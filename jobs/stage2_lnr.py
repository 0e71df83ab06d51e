"""Entry point: stage 2 (LNR / MiSLAS / random) on Ray Train. Same code path as `lnr-dist stage2 ...`.

python jobs/stage2_lnr.py --config configs/mini.yaml stage2.method=lnr stage2.threshold=tuned
"""

import sys

from lnr_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["stage2", *sys.argv[1:]]))
