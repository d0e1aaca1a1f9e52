"""pytest wiring for the local Kubernetes test cluster (see
docs/development/k8s-test-cluster.md).

* marker ``k8s``: tests that need the cluster; skipped (with the reason)
  when the binaries are not there.
* fixture ``k8s_node_specs`` (session): the fake nodes; override it in a
  conftest to change them.
* fixture ``k8s_cluster`` (session): etcd + kube-apiserver + kube-scheduler +
  kube-controller-manager + fake kubelet; yields a :class:`K8sTestCluster`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# This folder is deliberately not a package: its helpers import by plain name
# through pytest's ``pythonpath`` (pyproject.toml), in every import mode.
import httpx
import pytest
from fake_kubelet import FakeKubelet, NodeSpec, default_node_specs
from harness import Cluster, wait_for_service_account

from aicontract.backends.kubernetes import KubernetesBackend

K8S_MARKER = "k8s"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{K8S_MARKER}: needs the local Kubernetes control plane (etcd + kube-apiserver"
        " + scheduler + controller-manager + fake kubelet); skipped when"
        " .ci/k8s-cluster.sh has not been run",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    marked = [item for item in items if item.get_closest_marker(K8S_MARKER)]
    if not marked:
        return
    ok, reason = Cluster.available()
    if ok:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in marked:
        item.add_marker(skip)


@dataclass
class K8sTestCluster:
    """What the ``k8s_cluster`` fixture yields.

    ``kubeconfig``  path of a kubeconfig (CA embedded, admin token user)
    ``server``      API server URL, ``https://127.0.0.1:<port>``
    ``token``       admin bearer token (group ``system:masters``)
    ``ca_path``     CA certificate (PEM) to verify the API server
    ``kubelet``     the :class:`fake_kubelet.FakeKubelet` (alias ``fake_kubelet``)
    ``cluster``     the :class:`harness.Cluster` (processes, logs_dir, ...)
    ``node_specs``  the :class:`fake_kubelet.NodeSpec` list the nodes came from
    """

    kubeconfig: Path
    server: str
    token: str
    ca_path: Path
    kubelet: FakeKubelet
    cluster: Cluster
    node_specs: list[NodeSpec]

    @property
    def fake_kubelet(self) -> FakeKubelet:
        return self.kubelet

    @property
    def logs_dir(self) -> Path:
        return self.cluster.logs_dir

    def client(self, **kwargs: Any) -> httpx.Client:
        """An admin ``httpx.Client`` with ``base_url`` = the API server."""
        return self.cluster.client(**kwargs)

    def create_namespace(
        self, name: str, labels: dict[str, str] | None = None, timeout: float = 60.0
    ) -> None:
        """Create a namespace and wait for its ``default`` service account
        token (pods cannot be created in it before that)."""
        with self.client() as c:
            body = {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": labels or {}},
            }
            r = c.post("/api/v1/namespaces", json=body)
            if r.status_code not in (201, 409):
                raise RuntimeError(f"create namespace {name}: {r.status_code} {r.text}")
        wait_for_service_account(self.cluster, name, timeout=timeout)

    def delete_namespace(self, name: str, wait: bool = False, timeout: float = 60.0) -> None:
        with self.client() as c:
            c.delete(f"/api/v1/namespaces/{name}")
            deadline = time.monotonic() + timeout
            while wait and c.get(f"/api/v1/namespaces/{name}").status_code != 404:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"namespace {name} still there after {timeout}s")
                time.sleep(0.2)


@pytest.fixture(scope="session")
def k8s_node_specs() -> list[NodeSpec]:
    """Fake nodes of the session cluster: 3 x 4 H100 (two eu-west-1/EU,
    one us-east-1/US). Override this fixture to change them."""
    return default_node_specs()


@pytest.fixture(scope="session")
def k8s_cluster(k8s_node_specs: list[NodeSpec]) -> Iterator[K8sTestCluster]:
    ok, reason = Cluster.available()
    if not ok:
        pytest.skip(reason)
    cluster = Cluster()
    kubelet: FakeKubelet | None = None
    try:
        cluster.start()
        kubelet = FakeKubelet(cluster.server, cluster.token, cluster.ca_path, k8s_node_specs)
        kubelet.start(wait_ready=True, timeout=60)
        yield K8sTestCluster(
            kubeconfig=cluster.kubeconfig,
            server=cluster.server,
            token=cluster.token,
            ca_path=cluster.ca_path,
            kubelet=kubelet,
            cluster=cluster,
            node_specs=list(k8s_node_specs),
        )
    finally:
        if kubelet is not None:
            kubelet.stop()
        if os.environ.get("AICONTRACT_K8S_KEEP_WORKDIR"):
            print(f"\nk8s test cluster workdir kept: {cluster.workdir}", file=sys.stderr)
        cluster.stop()


@pytest.fixture
async def backend(k8s_cluster: Any) -> AsyncIterator[KubernetesBackend]:
    """A backend on the session's cluster, closed after the test."""
    kb = KubernetesBackend(kubeconfig=k8s_cluster.kubeconfig, ttl=30, release_timeout=60)
    try:
        yield kb
    finally:
        await kb.aclose()
