"""Run the test suite against the oldest wandb stepsync supports, a middle release and the newest.

    nox -s wandb_newest                      # the newest wandb release (the default session)
    nox -s wandb_oldest                      # OLDEST_WANDB below
    nox -s wandb_middle                      # MIDDLE_WANDB below
    nox -s wandb_oldest -- tests/test_core.py -x     # arguments after -- go to pytest

Each session builds a fresh virtualenv with the project's ``dev`` extra and the chosen wandb.
The framework extras are left out (they pull in torch); their tests skip themselves.
"""

from __future__ import annotations

import nox

#: The oldest supported wandb: the last 0.15 release (stepsync declares ``wandb>=0.15.0``).
#: wandb 0.15 to 0.17 run the Python backend: no ``reinit="create_new"`` (one live run per
#: process before 0.19.10; tests that need two skip), nested dicts within a step are replaced,
#: not merged (``stepsync._wandb.MERGES_NESTED_DICTS``), and the offline file has the last rows,
#: the summary and ``final`` after ``exit``. wandb 0.16.6 and older need ``numpy<2``.
OLDEST_WANDB = "0.15.12"
#: A middle release: the last one with the Python backend. (0.18.x and 0.19.1 hang offline when
#: a ``wandb.Table`` is logged, natively too, so they are not picked.)
MIDDLE_WANDB = "0.17.9"

nox.options.sessions = ["wandb_newest"]
nox.options.default_venv_backend = "venv"


#: pytest's arguments when none are given after ``--``. wandb < 0.18 spends about 2 s of every
#: run waiting on itself (``wandb.init`` and ``finish``), so those sessions run 4 workers
#: (pytest-xdist) on CI's 2 cores; the differential suite takes a quarter of its examples there.
WORKERS = ("-n", "4")


def _run_suite(session: nox.Session, *wandb_requirement: str, workers: bool = False) -> None:
    if wandb_requirement[0] == "--upgrade":
        session.install("-e", ".[dev]")
        session.install(*wandb_requirement)
    else:  # one resolution, so pip never installs a newer wandb or numpy 2 first
        session.install("-e", ".[dev]", *wandb_requirement)
    session.run("python", "-c", "import wandb; print('wandb', wandb.__version__)")
    session.run("pytest", *(session.posargs or (WORKERS if workers else ())))


@nox.session
def wandb_newest(session: nox.Session) -> None:
    """The suite against the newest wandb release."""
    _run_suite(session, "--upgrade", "wandb")


@nox.session
def wandb_middle(session: nox.Session) -> None:
    """The suite against a middle wandb release."""
    _run_suite(session, f"wandb=={MIDDLE_WANDB}", workers=True)


@nox.session
def wandb_oldest(session: nox.Session) -> None:
    """The suite against the oldest supported wandb release (with numpy<2, as it needs)."""
    _run_suite(session, f"wandb=={OLDEST_WANDB}", "numpy<2", workers=True)
