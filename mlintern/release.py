"""Provisional experiments: the controller's release, or withdrawal, of a job built ahead of its GPU.

Where nothing else would be queued on a GPU, the controller plans a provisional experiment on an
assumption about the one training there (that it is pruned at its first rung, so exploration goes on;
or that it does not change the winner the scale-up continues). It is dispatched at once, so its flow
run builds the rows and its training worker builds the trainer while that job trains. Built, it waits
for the controller's word before it takes the GPU: a release with the limits it may train to (the
budget and wall clock as they are then), or a withdrawal when the assumption failed. The word travels
as a Prefect variable: the server both sides already talk to, from any host of the work pool.
"""

from __future__ import annotations

import logging
import time

from pydantic import BaseModel, ValidationError

from mlintern.schemas import Fidelity
from mlintern.training.job import JobWithdrawn

log = logging.getLogger(__name__)
POLL_S = 0.5  # the provisional job's handover waits at most this long for the word once it is given


class Release(BaseModel):
    """The controller's word on a provisional experiment."""

    withdraw: bool = False
    fidelity: Fidelity | None = None  # its limits now (None: those it was dispatched with)


def release_name(goal_id: str, plan_id: str) -> str:
    """The Prefect variable that carries the word on one provisional experiment."""
    return f"intern-release-{goal_id}-{plan_id}".lower()


def give(name: str, word: Release) -> None:
    """Release or withdraw the provisional experiment `name` (it is waiting, or will wait, for this)."""
    from prefect.types import MAX_VARIABLE_VALUE_LENGTH
    from prefect.variables import Variable

    value = word.model_dump(mode="json", exclude_none=True)
    if word.fidelity is not None and len(word.model_dump_json()) >= MAX_VARIABLE_VALUE_LENGTH:
        log.warning("the release of %s is too long for a Prefect variable: it trains to the limits it was "
                    "dispatched with", name)
        value = Release().model_dump(mode="json", exclude_none=True)
    Variable.set(name, value, overwrite=True)


def clear(name: str) -> None:
    """Remove the word once the experiment has ended (a failure here leaves a stale variable, nothing more)."""
    from prefect.variables import Variable

    try:
        Variable.unset(name)
    except Exception as exc:  # noqa: BLE001 - housekeeping
        log.warning("could not remove the Prefect variable %s: %s", name, exc)


def wait_for_release(name: str, wait_s: float) -> Fidelity | None:
    """Block until the controller releases the experiment (its new limits, or None to keep its own) or
    withdraws it (JobWithdrawn). A controller that says nothing within `wait_s` seconds (killed, or cut off
    from the Prefect server) gets the job withdrawn: nothing trains on a GPU without its word."""
    from prefect.variables import Variable

    deadline = time.time() + wait_s
    while True:
        try:
            value = Variable.get(name)
        except Exception as exc:  # noqa: BLE001 - the server may blink; the deadline bounds it
            log.warning("reading the release %s from the Prefect server failed (%s); trying again", name, exc)
            value = None
        if value is not None:
            try:
                word = Release.model_validate(value)
            except ValidationError as exc:
                raise JobWithdrawn(f"the release {name} is not one this version reads ({exc}): withdrawn") from None
            if word.withdraw:
                raise JobWithdrawn("withdrawn by the controller before it took the GPU: what it was planned on "
                                   "changed when the experiment before it ended")
            return word.fidelity
        if time.time() >= deadline:
            raise JobWithdrawn(f"no word from the controller within {wait_s:.0f} s (variable {name}): withdrawn "
                               "without taking the GPU; check that the research-loop flow run is still running")
        time.sleep(POLL_S)


def released_limits(dispatched: Fidelity, word: Fidelity) -> Fidelity:
    """The limits a released job trains to: the controller's, within the steps its rows were built for."""
    return word.model_copy(update={"max_steps_bound": dispatched.max_steps_bound})
