"""What ``lmrec train`` shows and records while it runs: one progress bar with an ETA on the driver, TensorBoard
event files in the run folder, and an MLflow run when ``MLFLOW_TRACKING_URI`` is set.

Ray Train calls its callbacks in the controller actor, not in the driver, and every worker logs on its own; so
``EpochFeed`` (a ``UserCallback``) forwards each epoch's report (rank-identical metrics) through a small Ray
queue, and the driver's ``RunTracker`` turns it into one bar (on a terminal) or one line per epoch (logs, CI).
Tune trials do not use this: Tune has its own progress table and loggers.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
import threading
from pathlib import Path

from ray.train import UserCallback

from lmrec.config.base import SpecError
from lmrec.storage import is_uri, upload_dir

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
# shown on the bar and in the per-epoch line, when the run reports them
SHOWN = ("loss", "val_rmse", "val_ndcg@10", "val_recall@10")


class EpochFeed(UserCallback):
    """Controller side: put each epoch's metrics on a Ray queue the driver reads (``RunTracker.follow``)."""

    def __init__(self, queue) -> None:
        self.queue = queue
        self.lost = False

    def after_report(self, run_context, metrics, checkpoint):
        if not metrics or self.lost:
            return
        try:
            self.queue.put(dict(metrics[0]), timeout=10)
        except Exception as e:  # the queue's node is gone: progress stops, training goes on
            self.lost = True
            log.warning("progress feed stopped (%s): training continues; metrics stay in the run folder",
                        type(e).__name__)


def mlflow_uri() -> str | None:
    """``$MLFLOW_TRACKING_URI``, checked before any cluster time: set without mlflow installed is a ``SpecError``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return None
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise SpecError(f"MLFLOW_TRACKING_URI {uri!r} is set but mlflow is not installed "
                        "(pip install 'lmrec[tracking]', or unset it)") from None
    return uri


def _numbers(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def _safe_key(key: str) -> str:
    """TensorBoard tags and MLflow metric names take letters, digits, ``_-. /``: ``ndcg@10`` -> ``ndcg_at_10``."""
    return key.replace("@", "_at_")


def _group(key: str) -> str:
    """TensorBoard tag: ``val/val_rmse``, ``test/test_ndcg_at_10``, ``train/loss``."""
    prefix = key.split("_", 1)[0]
    return f"{prefix if prefix in ('val', 'test') else 'train'}/{_safe_key(key)}"


def _terminal_columns(stream) -> int:
    """Width of the terminal ``stream`` writes to; 0 when it is no terminal (a file, a pipe, a 0-wide pty)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns if stream.isatty() else 0
    except (AttributeError, OSError, ValueError):
        return 0


class RunTracker:
    """Driver side: a tqdm bar (stderr is a terminal) or a line per epoch, TensorBoard scalars, MLflow metrics."""

    def __init__(self, name: str, run_path: str, epochs: int, params: dict[str, str], *, experiment: str,
                 stream=None, mlflow_tracking_uri: str | None = None) -> None:
        self.name, self.run_path, self.epochs = name, run_path, epochs
        self.stream = stream or sys.stderr
        self.bar = None
        if _terminal_columns(self.stream) > 0:
            from tqdm import tqdm

            self.bar = tqdm(total=epochs, desc=name, unit="epoch", file=self.stream, dynamic_ncols=True)
        self._tb_local = None  # where the event files are written (a temp folder when the run folder is remote)
        self.tb = self._tensorboard()
        self.mlflow = None
        if mlflow_tracking_uri:
            import mlflow

            mlflow.set_tracking_uri(mlflow_tracking_uri)
            mlflow.set_experiment(experiment)  # the spec's name: its fresh (timestamped) runs side by side
            mlflow.start_run(run_name=name)
            self.mlflow = mlflow
            mlflow.log_params({k[:250]: v[:6000] for k, v in params.items()})

    def _tensorboard(self):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            log.warning("no TensorBoard event files: tensorboardX is not installed (it comes with ray[tune]; "
                        "pip install tensorboardX)")
            return None
        if is_uri(self.run_path):
            self._tb_local = tempfile.mkdtemp(prefix="lmrec-tb-")
        else:
            self._tb_local = str(Path(self.run_path) / TENSORBOARD_DIR)
        return SummaryWriter(logdir=self._tb_local)

    def epoch(self, metrics: dict) -> None:
        done = int(metrics.get("epoch", -1)) + 1
        values = _numbers(metrics)
        shown = {k: values[k] for k in SHOWN if k in values}
        if self.bar is not None:
            if self.bar.n == 0 and done > 1:  # a resumed run: start the bar (and its ETA) where it left off
                self.bar.n = self.bar.last_print_n = done - 1
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in shown.items()}, refresh=False)
            self.bar.update(done - self.bar.n)
        else:
            print(f"{self.name} epoch {done}/{self.epochs} " + " ".join(f"{k}={v:.4f}" for k, v in shown.items()),
                  file=self.stream, flush=True)
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(_group(key), value, done)
        if self.mlflow is not None:
            self.mlflow.log_metrics({_safe_key(k): v for k, v in values.items()}, step=done)

    def finish(self, best: dict, test: dict) -> None:
        """The selected epoch's validation metrics and the test metrics, at that epoch's step."""
        step = int(best.get("epoch", -1)) + 1
        final = {**{f"best_{k}": v for k, v in _numbers(best).items() if k.startswith("val_")}, **_numbers(test)}
        if self.tb is not None:
            for key, value in final.items():
                self.tb.add_scalar(f"best/{_safe_key(key)}" if key.startswith("best_") else _group(key), value, step)
        if self.mlflow is not None and final:
            self.mlflow.log_metrics({_safe_key(k): v for k, v in final.items()}, step=step)

    def close(self, ok: bool = True) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
            if is_uri(self.run_path):
                upload_dir(self._tb_local, f"{self.run_path}/{TENSORBOARD_DIR}")
        if self.mlflow is not None:
            self.mlflow.end_run(status="FINISHED" if ok else "FAILED")

    def follow(self, fit, queue):
        """Call ``fit()`` (on this thread: Ray installs signal handlers) while a thread feeds epochs from ``queue``."""
        from ray.util.queue import Empty

        stop = threading.Event()

        def feed():
            from ray.exceptions import RayError

            while True:
                try:
                    if stop.is_set() and queue.empty():
                        return
                    self.epoch(queue.get(timeout=0.5))
                except Empty:
                    continue
                except RayError as e:  # the queue actor is lost (its node died): stop following, once
                    log.warning("progress display stopped (%s); the run goes on", type(e).__name__)
                    return
                except Exception as e:  # a display problem never fails the run
                    log.warning("progress: %s", e)

        reader = threading.Thread(target=feed, name="lmrec-progress", daemon=True)
        reader.start()
        try:
            return fit()
        finally:
            stop.set()
            reader.join(timeout=30)

