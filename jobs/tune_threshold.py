"""Entry point: the Ray Tune threshold sweep. Same code path as `lnr-dist tune ...`.

python jobs/tune_threshold.py --config configs/mini.yaml "tune.thresholds=[1, 2, 3]"
"""

import sys

from lnr_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
