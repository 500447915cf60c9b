"""The simulated training job of ``stepsync demo``, run once per variant in a child process.

``python -m stepsync._demo_job --variant native|stepsync ...`` runs it and writes what it logged
as JSON. The job marks its steps and sources the way a stepsync user would (``step_scope``,
``@logs_metrics``, ``propagate``); without ``stepsync.patch()`` nothing reads those marks, so the
native run is plain wandb executing the very same ``wandb.log`` calls. Five sources log as real
integrations do: a callback with ``step=global_step``, a trainer without ``step``, a
low-priority progress logger, an evaluation thread that reports late, and a restart that replays
the last steps.
"""

from __future__ import annotations

import argparse
import json
import math
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

AXIS_KEY = "stepsync/step"
CALLBACK_KEY = "callback/grad_norm"
VARIANTS = ("native", "stepsync")
REPLAYED_STEPS = 5
EVAL_EVERY, EVAL_AT, EVAL_LAG = 20, 9, 3  # eval of step s starts at s % 20 == 9, ends at s + 3
PROGRESS_EVERY = 25  # a low-priority progress logger also writes train/loss, every 25 steps


class CallLog:
    """Performs the job's wandb.log calls and remembers what each one meant to log."""

    def __init__(self) -> None:
        self.values: list[tuple[int, int, str, float, int]] = []  # attempt, step, key, value, prio
        self.count = 0
        self._lock = threading.Lock()

    def log(
        self,
        attempt: int,
        step: int,
        priority: int,
        data: Mapping[str, float],
        *,
        explicit_step: bool,
    ) -> None:
        import wandb

        with self._lock:
            self.count += 1
            self.values.extend((attempt, step, k, v, priority) for k, v in data.items())
        if explicit_step:
            wandb.log(dict(data), step=step)
        else:
            wandb.log(dict(data))


def run_job(steps: int, calls: CallLog) -> None:
    """The simulated training job: five sources logging as real integrations do."""
    import stepsync

    @stepsync.logs_metrics("callback", priority=5)
    def callback(step: int, attempt: int) -> None:
        # Like a Lightning/Hugging Face callback: logs with step=global_step, before the
        # trainer's own log call of the step.
        grad_norm = 1.0 + 0.5 * math.sin(step / 6) + 0.02 * attempt
        calls.log(attempt, step, 5, {CALLBACK_KEY: round(grad_norm, 6)}, explicit_step=True)

    @stepsync.logs_metrics("trainer", priority=0)
    def trainer(step: int, attempt: int) -> None:
        # Like the Hugging Face WandbCallback: logs WITHOUT step, so wandb advances its own.
        loss = 2.0 * math.exp(-step / 40) + 0.01 * attempt
        data = {"train/loss": round(loss, 6), "train/lr": round(3e-4 * (1 - step / steps), 9)}
        calls.log(attempt, step, 0, data, explicit_step=False)

    @stepsync.logs_metrics("progress", priority=10)
    def progress(step: int, attempt: int) -> None:
        # A second logger writing the same key (a smoothed loss) at a lower priority.
        smoothed = 2.0 * math.exp(-step / 40) + 0.5
        data = {"train/loss": round(smoothed, 6), "progress/samples_per_s": 1000.0 + step}
        calls.log(attempt, step, 10, data, explicit_step=False)

    @stepsync.logs_metrics("eval", priority=1)
    def evaluate(step: int, done_training_step: threading.Event) -> None:
        # An evaluation in a worker thread: it reports only after training moved on.
        done_training_step.wait()
        accuracy = 0.5 + 0.4 * (1 - math.exp(-step / 30))
        calls.log(0, step, 1, {"eval/accuracy": round(accuracy, 6)}, explicit_step=True)

    def train(first: int, last: int, attempt: int) -> None:
        evals: dict[int, tuple[threading.Thread, threading.Event]] = {}
        for step in range(first, last):
            with stepsync.step_scope(step):
                callback(step, attempt)
                trainer(step, attempt)
                if step % PROGRESS_EVERY == PROGRESS_EVERY - 1:
                    progress(step, attempt)
                if attempt == 0 and step % EVAL_EVERY == EVAL_AT and step + EVAL_LAG < last:
                    release = threading.Event()
                    worker = threading.Thread(
                        target=stepsync.propagate(evaluate), args=(step, release), daemon=True
                    )
                    worker.start()
                    evals[step + EVAL_LAG] = (worker, release)
            if step in evals:  # deterministic: the eval reports while the loop waits for it
                worker, release = evals.pop(step)
                release.set()
                worker.join()

    train(0, steps, attempt=0)
    # The job is restarted from its checkpoint of step steps-5 and replays the last 5 steps.
    # (wandb resumes a run only online; continuing the same offline run hits the same check.)
    train(steps - REPLAYED_STEPS, steps, attempt=1)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job once in this process, for one variant; write what it logged as JSON."""
    parser = argparse.ArgumentParser(prog="python -m stepsync._demo_job")
    parser.add_argument("--variant", choices=VARIANTS, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import stepsync

    if args.variant == "stepsync":
        stepsync.patch()
    import wandb

    from stepsync._wandb import no_stats_settings

    run = wandb.init(
        project="stepsync-demo",
        name=f"demo-{args.variant}",
        dir=args.dir,
        mode="offline",
        settings=wandb.Settings(**no_stats_settings(), save_code=False, disable_git=True),
    )
    calls = CallLog()
    started = time.perf_counter()
    run_job(args.steps, calls)
    run.finish()
    seconds = time.perf_counter() - started
    stats = stepsync.get_manager(run).get_stats() if args.variant == "stepsync" else None
    document = {
        "variant": args.variant,
        "run_dir": str(Path(run.settings.sync_file).parent),
        "wandb_version": wandb.__version__,
        "log_calls": calls.count,
        "values": calls.values,
        "stats": stats,
        "seconds": seconds,
    }
    Path(args.out).write_text(json.dumps(document), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
