"""Training logs: `log.txt` in the output directory, the console (around the rank-0 progress bar)
and, when installed and asked for, TensorBoard. Only the main process writes."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm import tqdm


class RunLog:
    def __init__(self, save_dir: str | Path, *, enabled: bool = True, tensorboard: bool = False):
        self.enabled = enabled
        self.path = Path(save_dir) / "log.txt"
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.info("--report-to tensorboard: the tensorboard package is not installed; logging to log.txt only")
            else:
                self.writer = SummaryWriter(str(Path(save_dir) / "tensorboard"))

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {message}"
        tqdm.write(line)
        with self.path.open("a") as handle:
            handle.write(line + "\n")

    def metrics(self, step: int, values: dict[str, float], prefix: str = "train") -> None:
        """One line of `key=value` pairs, and the same scalars to TensorBoard."""
        if not self.enabled:
            return
        text = " | ".join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}" for key, value in values.items())
        self.info(f"{prefix} step {step} | {text}")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{prefix}/{key}", value, step)
            self.writer.flush()

    def json(self, name: str, payload: dict) -> None:
        if self.enabled:
            (self.path.parent / name).write_text(json.dumps(payload, indent=2) + "\n")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
