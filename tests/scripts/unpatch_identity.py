"""patch() twice, then unpatch(): wandb's own attributes come back, captured methods act natively.

Prints a JSON report; the run it logs shows wandb's native behaviour (a late value dropped).
Usage: python unpatch_identity.py OUTPUT_DIR
"""

import json
import sys

import wandb
from wandb.sdk.wandb_run import Run

import stepsync

NAMES = ("log", "_log", "finish", "define_metric")


def attributes() -> dict[str, object]:
    """What the Run class itself holds under each name stepsync may patch."""
    return {name: Run.__dict__.get(name) for name in NAMES}


before = attributes()
stepsync.patch()
stepsync.patch()
patched = attributes()
run = wandb.init(project="stepsync-activation", dir=sys.argv[1])
captured_run_log = run.log
captured_module_log = wandb.log
stepsync.unpatch()
after = attributes()
report = {
    "changed_by_patch": sorted(name for name in NAMES if patched[name] is not before[name]),
    "not_restored": sorted(name for name in NAMES if after[name] is not before[name]),
    "is_patched_after": stepsync.is_patched(),
}
# Captured while patched, called after unpatch(): wandb's own rules apply (late steps dropped).
captured_run_log({"native/a": 5}, step=5)
captured_run_log({"native/late": 3}, step=3)
captured_module_log({"native/b": 6}, step=6)
captured_module_log({"native/late_module": 4}, step=4)
run.finish()
print(json.dumps(report))
