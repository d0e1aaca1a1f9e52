"""The local backend end to end: a fake host inventory, the real SQLite ledger.

What a user relies on here is the lease's env (which GPUs and CPUs the
workload may touch), that grants follow the documented rule, that a launched
workload is published and cleaned up, and that the ledger is the truth
(released elsewhere means lost here).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import anyio
import pytest

from aicontract import (
    GPU,
    BackendError,
    Bytes,
    Contract,
    ContractError,
    LeaseLost,
    LeaseState,
    Negotiator,
    NoOffer,
    VirtualClock,
    Workload,
    WorkloadState,
)
from aicontract.backends.local import LocalBackend
from aicontract.backends.local.ledger import Ledger

pytestmark = pytest.mark.anyio

H100S, A100S, L4, MIG = ("0", "1"), ("2", "3"), "4", "MIG-4f1c2a3b-0000-0000-0000-000000000001"


async def acquire(backend: LocalBackend, contract: Contract):  # type: ignore[no-untyped-def]
    return await Negotiator([backend]).acquire(contract)


def gpus_of(lease) -> tuple[str, ...]:  # type: ignore[no-untyped-def]
    value = lease.env["CUDA_VISIBLE_DEVICES"]
    return tuple(value.split(",")) if value else ()


# -- quote, commit, renew, release ---------------------------------------------------------


async def test_quote_commit_renew_release(local_env: Path, state_dir: Path) -> None:
    # Virtual time that starts at the wall clock's now, so the ledger's readers (which
    # judge expiry by the wall clock) see the same leases this backend does.
    clock = VirtualClock(now=time.time())
    backend = LocalBackend(state_dir=state_dir, clock=clock)
    contract = Contract(name="train", gpus=GPU(count=2, models=["H100"]), cpus=2, memory="8GiB")
    (offer,) = (await backend.quote(contract)).offers
    assert (offer.grant.gpus, offer.grant.gpu_model, offer.grant.cpus) == (2, "H100", 2)
    assert offer.grant.memory == Bytes("8GiB")
    assert (offer.guarantee, offer.region, offer.price.amount) == ("allocated", "local", 0)

    lease = await backend.commit(offer, "key-1")
    assert lease.state == LeaseState.ACTIVE
    assert gpus_of(lease) == H100S
    assert lease.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert lease.env["AICONTRACT_CPUS"] == "0,1"
    assert lease.env["OMP_NUM_THREADS"] == "2"
    assert lease.env["AICONTRACT_LEASE_ID"] == lease.id

    other = Ledger.in_dir(state_dir)  # what another process on the host sees
    gpus, cpus, memory, _ = other.usage()
    assert (gpus, cpus, memory) == (set(H100S), {0, 1}, Bytes("8GiB").bytes)

    before = lease.expires_at
    await clock.advance(1)
    await lease.renew()
    assert lease.expires_at > before
    assert other.get(lease.id).expires_at == lease.expires_at  # type: ignore[union-attr]

    await lease.release()
    backend.ledger.close()
    assert lease.state == LeaseState.RELEASED
    assert other.records() == []
    assert other.usage()[:2] == (set(), set())


async def test_no_gpus_granted_means_empty_cuda_visible_devices(backend: LocalBackend) -> None:
    lease = await acquire(backend, Contract(cpus=1))
    try:
        assert lease.env["CUDA_VISIBLE_DEVICES"] == ""
        assert lease.grant.gpus == 0
    finally:
        await lease.release()


@pytest.mark.parametrize("name", ["CUDA_VISIBLE_DEVICES", "AICONTRACT_CPUS", "aicontract_x"])
def test_workload_env_cannot_set_what_the_grant_sets(name: str) -> None:
    """The contract's own env must not override (or fake) the pinning the ledger grants."""
    with pytest.raises(ContractError) as caught:
        Workload(env={name: "0,1,2,3", "HF_HOME": "/data"})
    assert caught.value.path.endswith(f"env.{name}")


async def test_workload_env_passes_through(backend: LocalBackend) -> None:
    contract = Contract(
        gpus=GPU(count=1, models=["L4"]), cpus=1, workload=Workload(env={"HF_HOME": "/data"})
    )
    lease = await acquire(backend, contract)
    try:
        assert lease.env["CUDA_VISIBLE_DEVICES"] == L4
        assert lease.env["AICONTRACT_CPUS"] == "0"
        assert lease.env["HF_HOME"] == "/data"  # other variables pass through
    finally:
        await lease.release()


async def test_idempotent_commit_gives_one_lease(backend: LocalBackend) -> None:
    (offer,) = (await backend.quote(Contract(gpus=GPU(count=1, models=["H100"])))).offers
    first = await backend.commit(offer, "same-key")
    again = await backend.commit(offer, "same-key")
    assert first.id == again.id
    assert gpus_of(first) == gpus_of(again) == ("0",)
    assert [r.id for r in backend.ledger.records()] == [first.id]
    await first.release()


async def test_an_expired_lease_does_not_block_its_devices(
    local_env: Path, state_dir: Path
) -> None:
    """A lease past its TTL (its holder stalled) frees its devices for the next grant.

    Its rows are still in the ledger until something reclaims them; the grant must
    not trip over them (a raw sqlite3.IntegrityError) when it picks their devices.
    """
    contract = Contract(gpus=GPU(count=1, models=["L4"]))
    clock = VirtualClock(now=time.time())
    stale = LocalBackend(state_dir=state_dir, ttl=0.05, clock=clock)
    try:
        (offer,) = (await stale.quote(contract)).offers
        await stale.commit(offer, "stalled-holder")  # never renewed, never released
    finally:
        stale.ledger.close()
    await clock.advance(0.1)
    backend = LocalBackend(state_dir=state_dir, clock=clock)
    lease = await Negotiator([backend], clock=clock).acquire(contract)
    try:
        assert gpus_of(lease) == (L4,)
        assert [r.id for r in backend.ledger.records(clock.time())] == [lease.id]
    finally:
        await lease.release()
        backend.ledger.close()


# -- which GPUs, how much ------------------------------------------------------------------


async def test_first_acceptable_model_in_contract_order(backend: LocalBackend) -> None:
    contract = Contract(gpus=GPU(count=2, models=["A100-80GB", "H100"]))
    first = await acquire(backend, contract)
    assert first.grant.gpu_model == "A100-80GB"
    assert gpus_of(first) == A100S
    second = await acquire(backend, contract)  # the A100s are taken: the next model
    assert second.grant.gpu_model == "H100"
    assert gpus_of(second) == H100S
    with pytest.raises(NoOffer):
        await acquire(backend, contract)
    for lease in (first, second):
        await lease.release()


async def test_one_model_per_lease(backend: LocalBackend) -> None:
    """Four 80GiB GPUs exist, but of two models: a lease never mixes them."""
    with pytest.raises(NoOffer) as info:
        await acquire(backend, Contract(gpus=GPU(count=4, memory="80GiB")))
    assert "at most 2 free of one model; 4 fit in all" in str(info.value)


@pytest.mark.parametrize(
    ("gpu", "expected"),
    [
        pytest.param(GPU(count=1, memory=">=40GiB"), "0", id="memory-skips-l4"),
        pytest.param(GPU(count=1, memory="<=32GiB"), L4, id="memory-max"),
        pytest.param(GPU(count=1, compute_capability="8.9"), "0", id="capability-9.0-ok"),
        pytest.param(GPU(count=1, models=["A100"], compute_capability="8.0"), "2", id="a100"),
        pytest.param(GPU(count=1, mig="1g.10gb"), MIG, id="mig-by-uuid"),
    ],
)
async def test_gpu_filters(backend: LocalBackend, gpu: GPU, expected: str) -> None:
    lease = await acquire(backend, Contract(gpus=gpu))
    try:
        assert gpus_of(lease) == (expected,)
    finally:
        await lease.release()


async def test_compute_capability_too_high_is_refused(backend: LocalBackend) -> None:
    quote = await backend.quote(Contract(gpus=GPU(count=1, compute_capability="10.0")))
    assert quote.offers == ()
    (why,) = quote.rejections
    assert why.requirement == "resources.gpus"
    assert "compute capability >= 10.0" in why.wanted


async def test_mig_slices_are_not_handed_out_as_whole_gpus(backend: LocalBackend) -> None:
    quote = await backend.quote(Contract(gpus=GPU(count=1, models=["A100-SXM4-40GB"])))
    assert quote.offers == ()


@pytest.mark.parametrize(
    ("contract", "field", "granted"),
    [
        pytest.param(Contract(cpus="2..4"), "cpus", 4, id="bounded-takes-max"),
        pytest.param(Contract(cpus="2.."), "cpus", 2, id="open-takes-min"),
        pytest.param(Contract(cpus="2..100"), "cpus", 8, id="bounded-capped-by-host"),
        pytest.param(Contract(memory="1GiB..4GiB"), "memory", Bytes("4GiB"), id="memory-max"),
        pytest.param(Contract(memory=">=8GiB"), "memory", Bytes("8GiB"), id="memory-min"),
        pytest.param(Contract(gpus=GPU(count="1..8", models=["H100"])), "gpus", 2, id="gpus"),
    ],
)
async def test_grant_rule(
    backend: LocalBackend, contract: Contract, field: str, granted: object
) -> None:
    (offer,) = (await backend.quote(contract)).offers
    assert getattr(offer.grant, field) == granted


async def test_counter_offer_when_fewer_gpus_are_free(backend: LocalBackend) -> None:
    held = await acquire(backend, Contract(gpus=GPU(count=1, models=["H100"])))
    contract = Contract(name="two", gpus=GPU(count=2, models=["H100"]))
    quote = await backend.quote(contract)
    assert quote.offers == ()
    assert [r.requirement for r in quote.rejections] == ["resources.gpus.count"]
    (counter,) = quote.counter_offers
    assert (counter.grant.gpus, counter.grant.gpu_model) == (1, "H100")
    with pytest.raises(NoOffer) as info:
        await acquire(backend, contract)
    assert info.value.counter_offers[0].grant.gpus == 1
    assert "counter-offer: local: 1 x H100" in str(info.value)
    await held.release()


async def test_more_cpus_than_the_host_has(backend: LocalBackend) -> None:
    quote = await backend.quote(Contract(cpus=16))
    assert [(r.requirement, r.available) for r in quote.rejections] == [
        ("resources.cpus", "8 free of 8")
    ]


async def test_jurisdiction_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, local_env: Path
) -> None:
    eu_only = Contract(cpus=1, jurisdictions=["EU"])
    with pytest.raises(NoOffer, match=r"placement\.jurisdictions"):
        await acquire(LocalBackend(), eu_only)  # an unknown jurisdiction never satisfies one
    monkeypatch.setenv("AICONTRACT_JURISDICTION", "EU")
    lease = await acquire(LocalBackend(), eu_only)
    assert lease.jurisdiction == "EU"
    await lease.release()


# -- the ledger is the truth ---------------------------------------------------------------


async def test_released_by_another_process_means_lost(
    backend: LocalBackend, state_dir: Path
) -> None:
    lease = await acquire(backend, Contract(gpus=1))
    assert Ledger.in_dir(state_dir).release(lease.id)  # as `aicontract release ID` does
    observed = await backend.observe(lease)
    assert [f.kind for f in observed.faults] == ["capacity-revoked"]
    with pytest.raises(LeaseLost):
        await lease.renew()
    assert lease.state == LeaseState.REVOKED


# -- workloads -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_workload_gets_an_endpoint_and_ends_with_the_lease(backend: LocalBackend) -> None:
    port = free_port()
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    contract = Contract(cpus=1, workload=Workload(command=command, ports={"http": port}))
    lease = await acquire(backend, contract)
    assert lease.endpoints == {"http": f"http://127.0.0.1:{port}"}
    assert lease.workload_state is WorkloadState.READY  # its port accepts connections
    assert (await backend.observe(lease)).workload == "ready"
    stream = await anyio.connect_tcp("127.0.0.1", port)  # it accepts connections now
    await stream.aclose()
    pid = int(lease.details["pid"])
    await lease.release()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # terminated and reaped


async def test_observe_reports_an_exited_workload(backend: LocalBackend) -> None:
    command = [sys.executable, "-c", "import sys; sys.exit(3)"]
    lease = await acquire(backend, Contract(cpus=1, workload=Workload(command=command)))
    try:
        with anyio.fail_after(30):  # a bound against hanging, not a timing assertion
            while not (observed := await backend.observe(lease)).faults:
                await anyio.sleep(0.02)
        (fault,) = observed.faults
        assert fault.kind == "workload-exited"
        assert "status 3" in fault.reason
        assert observed.workload == "completed"
    finally:
        await lease.release()


async def test_workload_that_dies_before_its_port_opens_frees_the_lease(
    backend: LocalBackend,
) -> None:
    command = [sys.executable, "-c", "raise SystemExit(1)"]
    contract = Contract(cpus=1, workload=Workload(command=command, ports={"http": free_port()}))
    with pytest.raises(BackendError, match="workload exited with 1 before port"):
        await acquire(backend, contract)
    assert backend.ledger.records() == []


async def test_a_chatty_workload_does_not_block_on_its_output(
    backend: LocalBackend, capfd: pytest.CaptureFixture[str]
) -> None:
    """Nobody reads a launched workload's output: it must not go to a pipe that fills up."""
    chatty = "import sys; sys.stdout.write('x' * 1_000_000); sys.stdout.flush()"
    lease = await acquire(
        backend, Contract(cpus=1, workload=Workload(command=[sys.executable, "-c", chatty]))
    )
    try:
        with anyio.fail_after(30):  # a pipe would block the writer forever
            while (observed := await backend.observe(lease)).workload != "completed":
                await anyio.sleep(0.02)
        assert observed.faults == ()  # exiting 0 is how a batch job completes: no fault
    finally:
        await lease.release()
    assert len(capfd.readouterr().out) >= 1_000_000  # the output went to our stdout


async def test_a_counter_offer_can_be_accepted_in_code(backend: LocalBackend) -> None:
    """The counter-offer carries the whole grant, so committing it keeps guarantee 3."""
    held = await acquire(backend, Contract(gpus=GPU(count=1, models=["H100"])))
    contract = Contract(name="two", gpus=GPU(count=2, models=["H100"]), cpus=2, memory="1GiB")
    with pytest.raises(NoOffer) as info:
        await acquire(backend, contract)
    (counter,) = info.value.counter_offers
    assert (counter.grant.cpus, counter.grant.memory) == (2, Bytes("1GiB"))
    relaxed = await Negotiator([backend]).commit(counter)
    assert relaxed.grant.gpus == 1
    assert relaxed.env["AICONTRACT_CPUS"].count(",") == 1
    await relaxed.release()
    await held.release()


async def test_no_counter_offer_when_something_else_is_missing_too(
    backend: LocalBackend,
) -> None:
    held = await acquire(backend, Contract(gpus=GPU(count=1, models=["H100"])))
    quote = await backend.quote(Contract(gpus=GPU(count=2, models=["H100"]), cpus=64))
    assert quote.counter_offers == ()
    await held.release()


async def test_a_lease_without_a_launched_workload_reports_no_workload_state(
    backend: LocalBackend,
) -> None:
    """When you run the work yourself, the backend cannot see it and says nothing."""
    lease = await acquire(backend, Contract(cpus=1))
    assert lease.workload_state is None
    assert (await backend.observe(lease)).workload is None
    await lease.release()


async def test_the_grant_states_the_gpus_properties(backend: LocalBackend) -> None:
    """The negotiator checks compute capability and MIG against what the grant states."""
    lease = await acquire(backend, Contract(gpus=GPU(count=1, compute_capability="8.9")))
    assert lease.grant.gpu_compute_capability == "9.0"  # an H100, the first that fits
    await lease.release()
    mig = await acquire(backend, Contract(gpus=GPU(count=1, mig="1g.10gb")))
    assert mig.grant.gpu_mig == "1g.10gb"
    await mig.release()
