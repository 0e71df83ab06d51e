"""Entry point: LNR flips from saved predictions. Same code path as `lnr-dist flips ...`.

python jobs/compute_flips.py --probs P.npy --labels L.npy --threshold 2.5 --seed 0 --out runs/flips
"""

import sys

from lnr_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["flips", *sys.argv[1:]]))
