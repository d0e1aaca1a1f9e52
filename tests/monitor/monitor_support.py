"""Helpers for the monitor's tests: service contracts and objective states.

The fake backend they run against is :class:`fakes.FakeBackend` with a fixed
``capacity`` (see ``conftest.py``).
"""

from __future__ import annotations

from typing import Any

from aicontract import GPU, Contract, Lease, Objective, Terms


def service_contract(
    *objectives: Objective, policy: str = "notify", per_hour: int = 3, **terms: Any
) -> Contract:
    """A one-GPU contract with the given objectives and violation policy."""
    return Contract(
        name="svc",
        resources={"gpus": GPU(count=1)},
        objectives=list(objectives),
        terms=Terms(on_violation=policy, max_renegotiations_per_hour=per_hour, **terms),
    )


def states(lease: Lease) -> dict[str, str]:
    return {k: v.value for k, v in lease.objective_states.items()}
