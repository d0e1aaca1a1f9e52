"""A quota held across a commit that takes longer than two minutes.

An admitted commit counts against its tenant's quota until its grant (or failure)
is recorded. A commit may rightly take minutes (``start_by: 10m``: a cloud
launch, a Slurm job pending, a Kubernetes gang waiting for nodes). While it is
in flight, another process of the same tenant must still be refused what the
quota no longer has; else both are granted and the tenant holds more than its quota.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import aicontract as ac
from aicontract.governance import Record, loads_policy
from aicontract.governance.enforce import Governance
from aicontract.negotiate import Negotiator
from fakes import FakeBackend

pytestmark = pytest.mark.anyio

POLICY = "tenants:\n  t: {quotas: {gpus: 1}}\n"


def _two_processes(tmp_path: Path) -> tuple[FakeBackend, Negotiator, Negotiator]:
    """Two negotiators on one record and one clock, each its own Governance and Record
    handle (as two processes would be); the first's backend, to slow its commit."""
    first_backend = FakeBackend(ttl=3600.0)
    clock = first_backend.clock

    def negotiator(backend: FakeBackend) -> Negotiator:
        gov = Governance(
            policy=loads_policy(POLICY), record=Record(tmp_path / "record.jsonl"), clock=clock
        )
        return Negotiator([backend], clock=clock, governance=gov)

    second_backend = FakeBackend(clock=clock, ttl=3600.0)
    return first_backend, negotiator(first_backend), negotiator(second_backend)


async def test_a_commit_slower_than_two_minutes_still_holds_its_quota(tmp_path: Path) -> None:
    contract = ac.Contract(name="slow", tenant="t", gpus=1, start_by="10m")
    first_backend, first, second = _two_processes(tmp_path)
    clock = first_backend.clock
    meanwhile: list[object] = []

    async def slow_launch(offer: ac.Offer) -> None:
        await clock.advance(150)  # the launch takes 2.5 minutes, well within start_by
        try:
            meanwhile.append(await second.acquire(contract))
        except ac.PolicyViolation as exc:
            meanwhile.append(exc)

    first_backend.on_commit = slow_launch
    lease = await first.acquire(contract)
    try:
        (other,) = meanwhile
        if isinstance(other, ac.Lease):
            await other.release()
            pytest.fail("tenant t (quota: 1 GPU) was granted 2 GPUs at once")
        assert isinstance(other, ac.PolicyViolation)
        assert other.refusals[0].rule == "tenants.t.quotas.gpus"
    finally:
        await lease.release()


async def test_a_commit_that_outlived_its_admission_is_judged_again(tmp_path: Path) -> None:
    """No ``start_by``: the admission counts two minutes. A commit slower than that, while
    another process took the tenant's last GPU, is refused when it lands, and its lease
    released (the tenant never holds more than its quota)."""
    contract = ac.Contract(name="slow", tenant="t", gpus=1)
    first_backend, first, second = _two_processes(tmp_path)
    clock = first_backend.clock
    meanwhile: list[ac.Lease] = []

    async def slow_launch(offer: ac.Offer) -> None:
        await clock.advance(150)  # past the admission's two minutes
        meanwhile.append(await second.acquire(contract))  # the admission lapsed: let in

    first_backend.on_commit = slow_launch
    try:
        with pytest.raises((ac.PolicyViolation, ac.NoOffer)) as caught:
            await first.acquire(contract)
        assert "tenants.t.quotas.gpus" in str(caught.value)
        assert first_backend.leases == {}  # the late lease was released, not kept
        assert len(meanwhile) == 1
    finally:
        for lease in meanwhile:
            await lease.release()
