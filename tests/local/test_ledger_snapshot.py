"""The ledger's kept view (its snapshot) never serves what the ledger no longer holds.

A quote, and the grant after it, reuse what this process last read of the ledger
while nothing else changed. Each test here changes the ledger behind a quote that
has just kept such a view — another process grants or releases, a lease expires, a
holder dies, this process writes on top of someone else's change — and checks
that the next quote or grant sees the change. Each would fail if the view were
trusted past it. The same goes for the GPU set a quote chose on a host with a
topology, which its commit takes only when it finds the very same view. Two
backends on one state dir are two processes to the ledger: their own connections
and holder tokens.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from msgspec.structs import replace

from aicontract import GPU, Contract, LeaseState, VirtualClock
from aicontract.backends.local import LocalBackend, ledger

pytestmark = pytest.mark.anyio

ONE_H100 = Contract(name="one", gpus=GPU(count=1, models=["H100"]))


async def free_h100s(backend: LocalBackend) -> tuple[str, ...]:
    """The H100s a quote of ``backend`` finds free (none: the quote has no offer)."""
    quote = await backend.quote(ONE_H100)
    if not quote.offers:
        return ()
    return tuple(quote.offers[0].details["gpu_candidates"].split(","))


async def test_a_quote_sees_what_another_process_granted_and_released(
    local_env: Path, state_dir: Path
) -> None:
    mine, other = LocalBackend(state_dir=state_dir), LocalBackend(state_dir=state_dir)
    try:
        assert await free_h100s(mine) == ("0", "1")
        assert mine.ledger._snapshot is not None  # kept: the next quote may reuse it
        assert await free_h100s(mine) == ("0", "1")
        held = await other.commit((await other.quote(ONE_H100)).offers[0], "other-1")
        assert await free_h100s(mine) == ("1",)
        await other.release(held)
        assert await free_h100s(mine) == ("0", "1")
    finally:
        await mine.aclose()
        await other.aclose()


async def test_a_quote_sees_an_expiry_with_nothing_committed(
    local_env: Path, state_dir: Path
) -> None:
    clock = VirtualClock(now=time.time())
    mine = LocalBackend(state_dir=state_dir, clock=clock)
    other = LocalBackend(state_dir=state_dir, ttl=5)
    try:
        held = await other.commit((await other.quote(ONE_H100)).offers[0], "other-1")
        assert await free_h100s(mine) == ("1",)
        await clock.advance(10)  # past the other lease's expiry; nobody writes
        assert await free_h100s(mine) == ("0", "1")
        assert held.state == LeaseState.ACTIVE  # its holder has not noticed yet
    finally:
        await mine.aclose()
        await other.aclose()


async def test_a_quote_sees_a_holder_die_with_nothing_committed(
    local_env: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger, "LIVENESS_CACHE", 0.0)  # ask the kernel every time
    mine, other = LocalBackend(state_dir=state_dir), LocalBackend(state_dir=state_dir)
    try:
        await other.commit((await other.quote(ONE_H100)).offers[0], "other-1")
        assert await free_h100s(mine) == ("1",)
        other.ledger.close()  # its holder lock goes, as when its process dies; no write
        assert await free_h100s(mine) == ("0", "1")
    finally:
        await mine.aclose()
        await other.aclose()


async def test_own_grants_and_releases_are_followed(local_env: Path, state_dir: Path) -> None:
    backend = LocalBackend(state_dir=state_dir)
    try:
        assert await free_h100s(backend) == ("0", "1")
        first = await backend.commit((await backend.quote(ONE_H100)).offers[0], "k-1")
        assert await free_h100s(backend) == ("1",)
        second = await backend.commit((await backend.quote(ONE_H100)).offers[0], "k-2")
        assert await free_h100s(backend) == ()
        await backend.release(first)
        assert await free_h100s(backend) == ("0",)
        await backend.release(second)
        assert await free_h100s(backend) == ("0", "1")
        # All of it from the one snapshot, followed: nothing else wrote meanwhile.
        assert backend.ledger._snapshot is not None
    finally:
        await backend.aclose()


async def test_own_writes_on_top_of_another_process_change_are_not_trusted(
    local_env: Path, state_dir: Path
) -> None:
    mine, other = LocalBackend(state_dir=state_dir), LocalBackend(state_dir=state_dir)
    try:
        lease = await mine.commit((await mine.quote(ONE_H100)).offers[0], "mine-1")
        assert lease.env["CUDA_VISIBLE_DEVICES"] == "0"
        assert await free_h100s(mine) == ("1",)  # its own grant, followed
        held = await other.commit((await other.quote(ONE_H100)).offers[0], "other-1")
        await mine.release(lease)  # its own release, after the other's grant
        assert await free_h100s(mine) == ("0",)  # not ("0", "1"): the other holds "1"
        await other.release(held)
        assert await free_h100s(mine) == ("0", "1")
    finally:
        await mine.aclose()
        await other.aclose()


async def test_a_grant_never_chooses_from_a_stale_view(local_env: Path, state_dir: Path) -> None:
    mine, other = LocalBackend(state_dir=state_dir), LocalBackend(state_dir=state_dir)
    try:
        offer = (await mine.quote(ONE_H100)).offers[0]  # both H100s free, view kept
        held = await other.commit((await other.quote(ONE_H100)).offers[0], "other-1")
        assert held.env["CUDA_VISIBLE_DEVICES"] == "0"
        lease = await mine.commit(offer, "mine-1")
        assert lease.env["CUDA_VISIBLE_DEVICES"] == "1"
        assert await free_h100s(mine) == ()
        assert await free_h100s(other) == ()
    finally:
        await mine.aclose()
        await other.aclose()


# -- what a quote chose, on a host with a topology -----------------------------------------

ISLANDS = {
    "cpus": 16,
    "memory": "256GiB",
    "numa": [{"id": 0, "cpus": "0-7"}, {"id": 1, "cpus": "8-15"}],
    "gpus": [
        {"model": "A100", "memory": "80GiB", "numa": i // 2, "nvlink_domain": f"island{i // 2}"}
        for i in range(4)
    ],
}
"""Two NVLink islands of 2 A100s, one per NUMA node."""


@pytest.fixture
def islands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps(ISLANDS))
    monkeypatch.setenv("AICONTRACT_INVENTORY", str(path))
    return tmp_path / "state"


async def test_a_commit_rechooses_when_another_process_took_the_quoted_gpu(
    islands: Path,
) -> None:
    mine, other = LocalBackend(state_dir=islands), LocalBackend(state_dir=islands)
    contract = Contract(gpus=1, cpus=2, placement={"locality": "numa"})
    try:
        offer = (await mine.quote(contract)).offers[0]  # a GPU and its CPUs chosen
        held = await other.commit((await other.quote(contract)).offers[0], "other-1")
        lease = await mine.commit(offer, "mine-1")
        assert lease.env["CUDA_VISIBLE_DEVICES"] != held.env["CUDA_VISIBLE_DEVICES"]
        assert not set(lease.env["AICONTRACT_CPUS"].split(",")) & set(
            held.env["AICONTRACT_CPUS"].split(",")
        )
    finally:
        await mine.aclose()
        await other.aclose()


async def test_a_changed_offer_is_chosen_for_afresh(islands: Path) -> None:
    backend = LocalBackend(state_dir=islands)
    contract = Contract(gpus=1, cpus=2, placement={"locality": "numa"})
    try:
        offer = (await backend.quote(contract)).offers[0]
        bigger = replace(offer, grant=replace(offer.grant, cpus=4))  # same offer id
        lease = await backend.commit(bigger, "k-1")
        assert len(lease.env["AICONTRACT_CPUS"].split(",")) == 4
    finally:
        await backend.aclose()
