"""Entry point: sharded two-pass inference and LNR flips. Same code path as `lnr-dist infer ...`.

python jobs/infer_flips.py --config configs/mini.yaml infer.threshold=2.0 ray.num_workers=2
"""

import sys

from lnr_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["infer", *sys.argv[1:]]))
