"""An agent framework acquiring several leases concurrently (async style).

Each "tool worker" gets its own exclusive CPU slice; the ledger guarantees no
two leases share a CPU, even across processes. Run: python examples/async_agent.py
"""

import anyio

import aicontract as ac


async def worker(n: int) -> None:
    contract = ac.Contract(name=f"tool-worker-{n}", cpus=1, duration="5m", start_by="20s")
    async with await ac.acquire(contract) as lease:
        print(f"worker {n}: {lease.id} pinned to CPUs {lease.env.get('AICONTRACT_CPUS')}")
        await anyio.sleep(0.2)  # do the work while the lease renews itself


async def main() -> None:
    async with anyio.create_task_group() as tg:
        for n in range(3):
            tg.start_soon(worker, n)


if __name__ == "__main__":
    anyio.run(main)
