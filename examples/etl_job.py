"""A stand-in for real work, run by `aicontract acquire ... -- python examples/etl_job.py`.

It reads what its lease granted from the environment, the way a real job would.
"""

import os

cpus = os.environ.get("AICONTRACT_CPUS", "")
print(f"lease {os.environ.get('AICONTRACT_LEASE_ID')}: pinned to CPUs [{cpus}]")
print(f"visible GPUs: {os.environ.get('CUDA_VISIBLE_DEVICES') or 'none'}")
if hasattr(os, "sched_getaffinity"):
    print(f"scheduler affinity: {sorted(os.sched_getaffinity(0))}")
total = sum(i * i for i in range(2_000_000))
print(f"etl done ({total})")
