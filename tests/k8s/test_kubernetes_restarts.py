"""A held lease while kube-apiserver restarts: renew, observe and release.

Issue 15 drove restarts at commits and at abandon; a lease that is merely held meets
them too. Nobody can tell whether the pod runs while the server is away: renewals and
observations fail as transient (tried again), never as a lost lease; a release waits
for the server and leaves nothing.
"""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import pytest
from test_kubernetes_faults import contract, wait_gone

from aicontract.backends.kubernetes import KubernetesBackend
from aicontract.errors import TransientBackendError
from aicontract.leases import LeaseState

pytestmark = [pytest.mark.k8s, pytest.mark.anyio]


async def test_a_held_lease_rides_out_an_apiserver_restart(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    lease = await backend.commit((await backend.quote(contract())).offers[0], uuid.uuid4().hex)
    ns = lease.details["namespace"]
    cluster = k8s_cluster.cluster
    await anyio.to_thread.run_sync(cluster.stop_apiserver)
    try:
        with pytest.raises(TransientBackendError):
            await backend.renew(lease)
        with pytest.raises(TransientBackendError):
            await backend.observe(lease)
        assert lease.state == LeaseState.ACTIVE
        async with anyio.create_task_group() as tg:
            tg.start_soon(lease.release)  # meets a dead API server first
            await anyio.sleep(3)
            cluster.start_apiserver()
    finally:
        if "kube-apiserver" not in cluster.processes:
            cluster.start_apiserver()
    assert lease.state == LeaseState.RELEASED
    await wait_gone(k8s_cluster, ns, lease.id)
