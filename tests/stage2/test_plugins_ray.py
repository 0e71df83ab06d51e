"""A stage-2 method from a module the test writes (one registry entry plus its loss), loaded through
`stage2.plugins` and run through `lnr-dist reproduce` (which runs the sweep on it) and `lnr-dist stage2`, each
a fresh CLI process with its own local Ray cluster, as a user runs them. No other module of the project knows it.

The plugin's loss factory leaves a marker file named after the process that built it: markers from processes
other than the CLI's prove that Ray Train workers and Tune trials imported the plugin themselves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PLUGIN = '''
"""A throw-away stage-2 method: LNR flips at the tuned threshold, trained with a focal loss."""
import os
from pathlib import Path

import torch
from torch.nn import functional as F

from lnr_dist.stage2.flip_sources import LNR_FLIPS
from lnr_dist.stage2.registry import Stage2Method, register


class FocalLoss(torch.nn.Module):
    def __init__(self, gamma: float) -> None:
        super().__init__()
        self.gamma = gamma

    def forward(self, logits, targets):
        log_p = F.log_softmax(logits.float(), 1).gather(1, targets[:, None]).squeeze(1)
        return (-((1 - log_p.exp()) ** self.gamma) * log_p).mean()


def focal_loss(s2, manifest):
    Path(os.environ["PLUGIN_MARKERS"], str(os.getpid())).touch()
    return FocalLoss(2.0)


register(Stage2Method("focal_lnr", "LNR flips with a focal loss (test plugin)", LNR_FLIPS, "tuned", loss=focal_loss))
'''


def _cli(args: list[str], plugin_dir: Path, markers: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PLUGIN_MARKERS": str(markers)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(plugin_dir), str(REPO), env.get("PYTHONPATH")) if p)
    process = subprocess.Popen([sys.executable, "-m", "lnr_dist.cli", *args], env=env, cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    stdout, stderr = process.communicate(timeout=900)
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    result.pid = process.pid
    assert result.returncode == 0, f"{' '.join(args[:1])} failed:\n{stdout[-3000:]}\n{stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def plugin_run(mini_root, tmp_path_factory):
    base = tmp_path_factory.mktemp("plugin")
    plugin_dir, markers, run = base / "plugins", base / "markers", base / "run"
    plugin_dir.mkdir()
    markers.mkdir()
    (plugin_dir / "focal_plugin_test.py").write_text(PLUGIN)
    common = [
        "--config", str(REPO / "configs" / "mini.yaml"), f"data.root={mini_root}",
        f"data.train_split={mini_root}/Mini_LT_train.txt", f"data.val_split={mini_root}/Mini_LT_val.txt",
        f"data.test_split={mini_root}/Mini_LT_test.txt", f"data.unlabeled_split={mini_root}/Mini_LT_pool.txt",
        "stage1.epochs=2", "stage1.warmup_epochs=0",
        "stage2.epochs=2", "tune.thresholds=[1.0, 2.0]", "reproduce.binary.enabled=false", "reproduce.bootstrap=0",
        "stage2.plugins=[focal_plugin_test]", "stage2.method=focal_lnr",
    ]  # fmt: skip
    reproduced = _cli(["reproduce", "--methods", "focal_lnr", *common, f"run_dir={run}"], plugin_dir, markers)
    reproduce_markers = {p.name for p in markers.iterdir()}
    for marker in markers.iterdir():
        marker.unlink()
    staged = _cli(["stage2", *common, f"run_dir={run / 'seed0'}", "stage2.threshold.policy=tuned"], plugin_dir,
                  markers)  # fmt: skip
    return {"run": run, "reproduce": reproduced, "reproduce_markers": reproduce_markers, "stage2": staged,
            "stage2_markers": {p.name for p in markers.iterdir()}}  # fmt: skip


def test_reproduce_runs_the_plugin_method_and_tunes_its_threshold(plugin_run):
    seed = plugin_run["run"] / "seed0"
    chosen = json.loads((seed / "tune" / "chosen_threshold.json").read_text())
    assert chosen["method"] == "focal_lnr" and chosen["threshold"] in (1.0, 2.0)
    results = json.loads((seed / "methods" / "focal_lnr" / "results.json").read_text())
    assert results["flips"]["method"] == "focal_lnr" and results["flips"]["threshold"] == chosen["threshold"]
    assert results["flips"]["num_flips"] == chosen["chosen"]["num_flips"] > 0
    assert (seed / "methods" / "focal_lnr" / "test_logits.npz").is_file()
    text = (plugin_run["run"] / "results.md").read_text()
    assert "| focal_lnr |" in text and "LNR flips with a focal loss (test plugin)" in text


def test_ray_workers_and_tune_trials_imported_the_plugin(plugin_run):
    driver = str(plugin_run["reproduce"].pid)
    workers = plugin_run["reproduce_markers"] - {driver}
    # the sweep's trials (cached features) and the stage-2 job's two Ray Train workers each built the loss
    assert len(workers) >= 3, plugin_run["reproduce_markers"]


def test_lnr_dist_stage2_runs_the_plugin_method_at_the_tuned_threshold(plugin_run):
    seed = plugin_run["run"] / "seed0"
    results = json.loads((seed / "stage2" / "results.json").read_text())
    chosen = json.loads((seed / "tune" / "chosen_threshold.json").read_text())
    assert results["flips"]["method"] == "focal_lnr" and results["flips"]["threshold"] == chosen["threshold"]
    assert "method focal_lnr:" in plugin_run["stage2"].stdout
    assert plugin_run["stage2_markers"] - {
        str(plugin_run["stage2"].pid)
    }  # its Ray Train workers built the loss
