"""Kubernetes backend: time from ``acquire`` to ``allocated``, and API writes per lease.

    python benchmarks/k8s_lease.py [--sequential 100] [--concurrent 20]

Starts the test control plane of ``tests/k8s`` (etcd, kube-apiserver,
kube-scheduler, kube-controller-manager, fake kubelet with 3 nodes x 4 GPUs;
binaries as in docs/development/k8s-test-cluster.md), then:

1. N leases in sequence: acquire (quote + commit, which returns once the real
   scheduler has bound the pod) then release (until the objects are gone).
2. M leases acquired at once (M <= 12 fit; the rest get NoOffer), then released.

For each: acquire->allocated latency (median, p90, max), release time, and API
writes per lease (POST/PATCH/DELETE counted by the client). Figures are
printed with the machine they were measured on; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import anyio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "k8s"))

from fake_kubelet import FakeKubelet, default_node_specs  # noqa: E402
from harness import Cluster  # noqa: E402

import aicontract as ac  # noqa: E402
from aicontract.backends.kubernetes import KubernetesBackend  # noqa: E402
from aicontract.negotiate import Negotiator  # noqa: E402


def _summary(name: str, seconds: list[float]) -> str:
    if not seconds:
        return f"{name}: none"
    ordered = sorted(seconds)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return (
        f"{name}: median {statistics.median(ordered) * 1000:.0f} ms, "
        f"p90 {p90 * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms (n={len(ordered)})"
    )


async def _sequential(backend: KubernetesBackend, n: int) -> None:
    negotiator = Negotiator([backend])
    contract = ac.Contract(name="bench-seq", tenant="bench", gpus=1)
    acquire, release = [], []
    start_writes = backend.api.writes
    commit_writes = 0
    for _ in range(n):
        t0 = time.perf_counter()
        w0 = backend.api.writes
        lease = await negotiator.acquire(contract)
        acquire.append(time.perf_counter() - t0)
        commit_writes += backend.api.writes - w0
        t1 = time.perf_counter()
        await lease.release()
        release.append(time.perf_counter() - t1)
    writes = backend.api.writes - start_writes
    print(f"\n{n} leases in sequence")
    print("  " + _summary("acquire -> allocated", acquire))
    print("  " + _summary("release -> gone", release))
    print(
        f"  API writes per lease: {writes / n:.1f} "
        f"({commit_writes / n:.1f} to commit, {(writes - commit_writes) / n:.1f} to release)"
    )


async def _concurrent(backend: KubernetesBackend, m: int) -> None:
    negotiator = Negotiator([backend])
    contract = ac.Contract(name="bench-con", tenant="bench", gpus=1)
    times: list[float] = []
    leases: list[ac.Lease] = []
    refused = 0
    w0 = backend.api.writes

    async def one() -> None:
        nonlocal refused
        t0 = time.perf_counter()
        try:
            leases.append(await negotiator.acquire(contract))
        except ac.NoOffer:
            refused += 1
            return
        times.append(time.perf_counter() - t0)

    t_all = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(m):
            tg.start_soon(one)
    wall = time.perf_counter() - t_all
    commit_writes = backend.api.writes - w0
    async with anyio.create_task_group() as tg:
        for lease in leases:
            tg.start_soon(lease.release)
    writes = backend.api.writes - w0
    print(f"\n{m} leases at once ({len(leases)} allocated, {refused} NoOffer) in {wall:.2f}s")
    print("  " + _summary("acquire -> allocated", times))
    print(
        f"  API writes per attempted lease: {writes / m:.1f} "
        f"({commit_writes / m:.1f} to commit or give up, "
        f"{(writes - commit_writes) / max(1, len(leases)):.1f} per release)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequential", type=int, default=100)
    parser.add_argument("--concurrent", type=int, default=20)
    args = parser.parse_args()
    ok, reason = Cluster.available()
    if not ok:
        sys.exit(reason)
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )
    print(
        "cluster: local kube-apiserver/scheduler/controller-manager v1.20.2 + etcd, "
        "fake kubelet, 3 nodes x 4 GPUs, all on this machine"
    )
    cluster = Cluster()
    cluster.start()
    kubelet = FakeKubelet(cluster.server, cluster.token, cluster.ca_path, default_node_specs())
    try:
        kubelet.start(wait_ready=True, timeout=60)

        async def run() -> None:
            backend = KubernetesBackend(kubeconfig=cluster.kubeconfig)
            try:
                await _sequential(backend, args.sequential)
                await _concurrent(backend, args.concurrent)
            finally:
                await backend.aclose()

        anyio.run(run)
    finally:
        kubelet.stop()
        cluster.stop()


if __name__ == "__main__":
    main()
