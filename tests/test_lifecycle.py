"""Whatever ``aicontract.acquire()``/``quote()`` and the sync faces build, they close."""

from __future__ import annotations

from collections.abc import Iterator

import attrs
import pytest

import aicontract
from aicontract import Contract, NoOffer, register_backend, unregister_backend
from aicontract.clock import system_clock
from fakes import FakeBackend

pytestmark = pytest.mark.anyio


@attrs.define(eq=False)
class ClosingBackend(FakeBackend):
    """A fake that counts how often it was closed."""

    closed: int = 0

    async def aclose(self) -> None:
        self.closed += 1


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, ClosingBackend]]:
    """Two backends, ``has`` (offers) and ``lacks`` (no capacity), from the environment."""
    made: dict[str, ClosingBackend] = {}

    def factory(name: str, available: bool) -> ClosingBackend:
        made[name] = ClosingBackend(name=name, clock=system_clock, available=available)
        return made[name]

    register_backend("has", lambda: factory("has", True))
    register_backend("lacks", lambda: factory("lacks", False))
    monkeypatch.setenv("AICONTRACT_BACKENDS", "has,lacks")
    yield made
    unregister_backend("has")
    unregister_backend("lacks")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def contract() -> Contract:
    return aicontract.loads("name: c\nresources: {gpus: {count: 1}}\n", format="yaml")


async def test_quote_closes_what_it_built(
    built: dict[str, ClosingBackend], contract: Contract
) -> None:
    result = await aicontract.quote(contract)
    assert [o.backend for o in result.offers] == ["has"]
    assert {n: b.closed for n, b in built.items()} == {"has": 1, "lacks": 1}


async def test_acquire_closes_what_it_built_when_the_lease_is_released(
    built: dict[str, ClosingBackend], contract: Contract
) -> None:
    held = await aicontract.acquire(contract)
    assert held.backend is built["has"]
    # The lease needs its backend (to renew, to stop its workload), and a renegotiation
    # may need the others: all stay open until the lease is released.
    assert (built["has"].closed, built["lacks"].closed) == (0, 0)
    await held.renew()
    await held.release()
    assert built["has"].releases == [held.id]
    assert (built["has"].closed, built["lacks"].closed) == (1, 1)
    await held.release()  # a second release closes nothing twice
    assert (built["has"].closed, built["lacks"].closed) == (1, 1)


async def test_a_renegotiated_chain_closes_them_at_its_end(
    built: dict[str, ClosingBackend], contract: Contract
) -> None:
    """Make-before-break: the first lease is released once its replacement is active;
    the backends must outlive it, for the replacement."""
    first = await aicontract.acquire(contract)
    replacement = await built["has"].commit(
        (await built["has"].quote(contract)).offers[0], "replacement"
    )
    first.hand_over(replacement)
    await first.release(successors=False)  # as the monitor retires a replaced lease
    assert built["has"].closed == 0, "the replacement still runs on it"
    await replacement.release()
    assert (built["has"].closed, built["lacks"].closed) == (1, 1)


async def test_acquire_closes_everything_when_nothing_is_leased(
    built: dict[str, ClosingBackend], contract: Contract, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AICONTRACT_BACKENDS", "lacks")
    with pytest.raises(NoOffer):
        await aicontract.acquire(contract)
    assert built["lacks"].closed == 1


async def test_backends_you_pass_stay_open(contract: Contract) -> None:
    mine = ClosingBackend(name="mine", clock=system_clock)
    held = await aicontract.acquire(contract, backends=[mine])
    await held.release()
    await aicontract.quote(contract, backends=[mine])
    assert mine.closed == 0


def test_sync_faces_close_what_they_built(
    built: dict[str, ClosingBackend], contract: Contract
) -> None:
    aicontract.quote_sync(contract)
    assert {n: b.closed for n, b in built.items()} == {"has": 1, "lacks": 1}
    with aicontract.lease(contract) as held:
        assert built["has"].closed == 0
    assert held.state.value == "released"
    assert built["has"].closed == 1
    held = aicontract.acquire_sync(contract, keep_alive=False)
    assert built["has"].closed == 0
    aicontract.release_sync(held)
    assert built["has"].closed == 1


def test_default_backends_refuses_an_empty_list(monkeypatch: pytest.MonkeyPatch) -> None:
    from aicontract import ConfigError
    from aicontract.negotiate import default_backends

    monkeypatch.setenv("AICONTRACT_BACKENDS", " , ")
    with pytest.raises(ConfigError, match="must list at least one"):
        default_backends()
