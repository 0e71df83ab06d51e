"""Resumable steps: a step that finished leaves `<folder>/steps/<name>.json` with the hash of the config it ran
on; a re-run skips it when the hash matches and runs it otherwise (the jobs themselves resume from their
checkpoints, and refuse a folder written by another recipe). A failing step stops the chain with StepFailed; the
records of finished steps and their outputs stay as they were."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core import storage
from ..core.errors import UserError

log = logging.getLogger(__name__)


class StepFailed(RuntimeError):
    pass


def config_hash(*parts: Any) -> str:
    """Hash of JSON-able config pieces (sorted keys), the identity of a step's inputs."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class StepLog:
    """The steps of one run folder. `first` and `total` number them in the log ("step k of n: name"): a
    reproduce over several seeds counts on from one seed's steps to the next."""

    def __init__(self, folder: Path, first: int = 1, total: int | None = None) -> None:
        self.folder = folder / "steps"
        self.ran: list[str] = []
        self.skipped: list[str] = []
        self.first, self.total = first, total

    def _label(self, name: str) -> str:
        number = self.first + len(self.ran) + len(self.skipped)
        return f"step {number} of {self.total}: {name}" if self.total else f"step {name}"

    def record(self, name: str) -> dict[str, Any] | None:
        path = self.folder / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def run(self, name: str, digest: str, func: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
        """func's result (or the recorded one when the step already finished with this config)."""
        record = self.record(name)
        label = self._label(name)
        if record is not None and record["config_hash"] == digest:
            log.info("%s: done before (config %s), skipped", label, digest)
            self.skipped.append(name)
            return record["result"]
        if record is not None:
            log.info("%s: finished before with config %s, now %s: running again", label, record["config_hash"],
                     digest)  # fmt: skip
        else:
            log.info("%s: running", label)
        began = time.perf_counter()
        try:
            result = func() or {}
        except UserError:
            raise
        except Exception as exc:
            raise StepFailed(
                f"step {name} failed: {type(exc).__name__}: {exc}\nfinished steps and their outputs are kept under "
                f"{self.folder.parent}; fix the cause and run the same command again to resume"
            ) from exc
        seconds = time.perf_counter() - began
        storage.write_json(self.folder / f"{name}.json",
                           {"config_hash": digest, "seconds": seconds, "result": result,
                            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")})  # fmt: skip
        self.ran.append(name)
        log.info("%s: finished in %.1f s", label, seconds)
        return result
