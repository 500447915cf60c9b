"""Run the test suite against the oldest wandb stepsync supports and against the newest.

    nox -s wandb_newest                      # the newest wandb release (the default session)
    nox -s wandb_oldest                      # OLDEST_WANDB below
    nox -s wandb_oldest -- tests/test_core.py -x     # arguments after -- go to pytest

Each session builds a fresh virtualenv with the project's ``dev`` extra and the chosen wandb.
The framework extras are left out (they pull in torch); their tests skip themselves.
"""

from __future__ import annotations

import nox

#: The oldest supported wandb: the oldest release the suite can run against. Before 0.19.10,
#: ``wandb.init`` has no ``reinit="create_new"``/``"finish_previous"``, so a process cannot hold
#: several live runs (one manager per run) and the tests cannot start one run per test.
#: What stepsync itself uses is older: ``Run.log`` -> ``Run._log``, ``Run._teardown_hooks`` with
#: ``TeardownStage.EARLY``, the ``run.step`` property and the offline ``.wandb`` format that
#: ``stepsync.history`` reads are all in 0.18.7 already. Between 0.19.10 and 0.27.2 two details
#: differ from the newest wandb: the Python-side step counter is ``Run._step`` (``_local_step``
#: from 0.27.2, when ``run.step`` became a round trip to wandb-core), and a disabled run is a
#: plain ``Run`` with ``run.disabled`` set (``NoopRun``, a ``Run`` subclass, from 0.27.1).
OLDEST_WANDB = "0.19.10"

nox.options.sessions = ["wandb_newest"]
nox.options.default_venv_backend = "venv"


def _run_suite(session: nox.Session, *wandb_requirement: str) -> None:
    session.install("-e", ".[dev]")
    session.install(*wandb_requirement)
    session.run("python", "-c", "import wandb; print('wandb', wandb.__version__)")
    session.run("pytest", *session.posargs)


@nox.session
def wandb_newest(session: nox.Session) -> None:
    """The suite against the newest wandb release."""
    _run_suite(session, "--upgrade", "wandb")


@nox.session
def wandb_oldest(session: nox.Session) -> None:
    """The suite against the oldest supported wandb release."""
    _run_suite(session, f"wandb=={OLDEST_WANDB}")
