"""Entry point: stage 2 of stage2.method (a method of lnr_dist/stage2/registry.py or of a stage2.plugins module)
on its backend: images (Ray Train) or cached features. Same code path as `lnr-dist stage2 ...`.

python jobs/stage2_lnr.py --config configs/mini.yaml stage2.method=lnr stage2.threshold.policy=tuned
python jobs/stage2_lnr.py --config configs/mini.yaml stage2.threshold.policy=fixed stage2.threshold.value=2.5
"""

import sys

from lnr_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["stage2", *sys.argv[1:]]))
