"""Quickstart, blocking style: lease what this host can give, use it, give it back.

Run: python examples/quickstart.py   (works in a notebook cell too)
"""

import aicontract as ac

contract = ac.Contract(
    name="quickstart",
    cpus="1..2",
    memory="256MiB..",
    duration="10m",
    start_by="30s",  # wait up to 30 s for capacity, then raise NoOffer
)

try:
    with ac.lease(contract) as lease:
        print(lease)
        print("granted:", lease.grant.describe())
        print("env for the workload:", {k: v for k, v in lease.env.items() if "CPU" in k})
except ac.NoOffer as exc:
    # exc.rejections says, per backend, which requirement failed; exc.counter_offers
    # holds what the backend could give instead.
    print(exc)
