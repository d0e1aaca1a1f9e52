"""A fake kubelet (what kwok does) for a control plane without real nodes.

:class:`FakeKubelet` talks to the API server over HTTPS with a bearer token
(``httpx``) and, from background threads:

* registers fake GPU ``Node`` objects (capacity/allocatable ``cpu``,
  ``memory``, ``pods``, ``nvidia.com/gpu``; GPU product/memory, region, zone
  and jurisdiction labels);
* keeps them Ready: refreshes the node conditions' heartbeat times and renews
  one ``coordination.k8s.io/v1`` Lease per node in ``kube-node-lease`` (so
  the node-lifecycle controller leaves them alone);
* watches pods (watch API) and, for pods bound to its nodes, sets them
  ``Running`` (pod IP, conditions, container statuses); finishes the deletion
  of pods that have a ``deletionTimestamp`` (``gracePeriodSeconds=0``), like
  a kubelet does once containers are gone;
* optionally completes pods: a pod annotated
  ``fake-kubelet.aicontract.io/exit-after-seconds: "N"`` (and optionally
  ``fake-kubelet.aicontract.io/exit-code``) ends ``Succeeded``/``Failed`` N
  seconds after it started (not for ``restartPolicy: Always``), or call
  :meth:`FakeKubelet.complete_pod`.

Tests can :meth:`~FakeKubelet.kill_node` (stop heartbeats, mark Ready
``Unknown``/``False``), :meth:`~FakeKubelet.revive_node`,
:meth:`~FakeKubelet.remove_node` and :meth:`~FakeKubelet.add_node`.

Every loop exits when the stop event is set; :meth:`FakeKubelet.stop` joins
the threads (bounded by the watch timeout).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import httpx

log = logging.getLogger("aicontract.tests.k8s.fake_kubelet")

GPU_RESOURCE = "nvidia.com/gpu"
LABEL_GPU_PRODUCT = "nvidia.com/gpu.product"
LABEL_GPU_MEMORY = "nvidia.com/gpu.memory"
LABEL_GPU_COUNT = "nvidia.com/gpu.count"
LABEL_REGION = "topology.kubernetes.io/region"
LABEL_ZONE = "topology.kubernetes.io/zone"
LABEL_JURISDICTION = "aicontract.io/jurisdiction"
LABEL_HOSTNAME = "kubernetes.io/hostname"
ANNOTATION_MANAGED = "fake-kubelet.aicontract.io/managed"
ANNOTATION_EXIT_AFTER = "fake-kubelet.aicontract.io/exit-after-seconds"
ANNOTATION_EXIT_CODE = "fake-kubelet.aicontract.io/exit-code"
NODE_LEASE_NAMESPACE = "kube-node-lease"
KUBELET_VERSION = "v1.20.2"

_SMP = {"Content-Type": "application/strategic-merge-patch+json"}
_MERGE = {"Content-Type": "application/merge-patch+json"}


def _now() -> str:
    """metav1.Time (RFC 3339, seconds)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now_micro() -> str:
    """metav1.MicroTime (RFC 3339 with microseconds), used by Lease."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class NodeSpec:
    """Shape of one fake GPU node."""

    name: str
    region: str = "eu-west-1"
    zone: str | None = None  # default: f"{region}a"
    jurisdiction: str | None = None  # label aicontract.io/jurisdiction
    gpus: int = 4
    gpu_product: str = "NVIDIA-H100-80GB-HBM3"
    gpu_memory_mib: int = 81559
    cpu: str = "64"
    memory: str = "512Gi"
    pods: int = 110
    labels: dict[str, str] = field(default_factory=dict)
    # Older clusters (and some providers) still label nodes with the beta key only.
    region_label: str = LABEL_REGION
    zone_label: str = LABEL_ZONE
    annotations: dict[str, str] = field(default_factory=dict)
    taints: list[dict[str, Any]] = field(default_factory=list)
    extra_capacity: dict[str, str] = field(default_factory=dict)

    def all_labels(self) -> dict[str, str]:
        labels = {
            LABEL_HOSTNAME: self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": "amd64",
            self.region_label: self.region,
            self.zone_label: self.zone or f"{self.region}a",
            "type": "fake-kubelet",
        }
        if self.gpus:
            labels[LABEL_GPU_PRODUCT] = self.gpu_product
            labels[LABEL_GPU_MEMORY] = str(self.gpu_memory_mib)
            labels[LABEL_GPU_COUNT] = str(self.gpus)
        if self.jurisdiction:
            labels[LABEL_JURISDICTION] = self.jurisdiction
        labels.update(self.labels)
        return labels

    def capacity(self) -> dict[str, str]:
        cap = {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": str(self.pods),
            "ephemeral-storage": "1Ti",
        }
        if self.gpus:
            cap[GPU_RESOURCE] = str(self.gpus)
        cap.update(self.extra_capacity)
        return cap


def default_node_specs() -> list[NodeSpec]:
    """3 nodes x 4 H100s: two in eu-west-1 (EU), one in us-east-1 (US)."""
    return [
        NodeSpec(name="gpu-eu-1", region="eu-west-1", zone="eu-west-1a", jurisdiction="EU"),
        NodeSpec(name="gpu-eu-2", region="eu-west-1", zone="eu-west-1b", jurisdiction="EU"),
        NodeSpec(name="gpu-us-1", region="us-east-1", zone="us-east-1a", jurisdiction="US"),
    ]


@dataclass
class _NodeState:
    spec: NodeSpec
    index: int
    internal_ip: str
    pod_net: ipaddress.IPv4Network
    alive: bool = True
    ready_status: str = "True"
    ready_since: str = field(default_factory=_now)
    next_ip: int = 2
    last_beat: float = 0.0
    # Serialises heartbeats with kill/revive so a late heartbeat can't undo a kill.
    lock: threading.Lock = field(default_factory=threading.Lock)


class FakeKubeletError(RuntimeError):
    pass


class FakeKubelet:
    """Fake kubelet for a set of fake nodes; see module docstring."""

    def __init__(
        self,
        server: str,
        token: str,
        ca_path: str | Any,
        nodes: Iterable[NodeSpec] | None = None,
        *,
        heartbeat_interval: float = 5.0,
        deletion_delay: float = 0.0,
        lease_duration_seconds: int = 40,
        watch_timeout_seconds: int = 5,
        request_timeout: float = 15.0,
        node_ip_base: str = "10.200.0.0",
        pod_cidr_base: str = "10.244.0.0",
    ) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.ca_path = str(ca_path)
        self.heartbeat_interval = heartbeat_interval
        # Seconds a real kubelet takes to stop containers before it finalises a
        # deletion; tests set it to see terminating pods linger.
        self.deletion_delay = deletion_delay
        self._deletions: dict[str, tuple[float, str, str]] = {}  # uid -> (due, ns, name)
        self.lease_duration_seconds = lease_duration_seconds
        self.watch_timeout_seconds = watch_timeout_seconds
        self.request_timeout = request_timeout
        self._node_ip_base = ipaddress.IPv4Address(node_ip_base)
        self._pod_cidr_base = ipaddress.IPv4Address(pod_cidr_base)
        self._lock = threading.RLock()
        self._nodes: dict[str, _NodeState] = {}
        self._next_index = 0
        self._pending_specs = list(nodes if nodes is not None else default_node_specs())
        self._completions: dict[
            str, tuple[float, str, str, int]
        ] = {}  # uid -> (due, ns, name, code)
        self._stop = threading.Event()
        self._watch_resp: httpx.Response | None = None
        self._threads: list[threading.Thread] = []
        self._started = False
        self.errors: list[str] = []  # last errors from the loops (for debugging)
        self.pods_started = 0
        self.pods_deleted = 0

    # ----------------------------------------------------------- plumbing
    def _client(self, read_timeout: float | None = None) -> httpx.Client:
        timeout = httpx.Timeout(self.request_timeout, read=read_timeout or self.request_timeout)
        return httpx.Client(
            base_url=self.server,
            verify=ssl.create_default_context(cafile=self.ca_path),
            headers={
                "Authorization": f"Bearer {self.token}",
                "User-Agent": "aicontract-fake-kubelet",
            },
            timeout=timeout,
        )

    def _record_error(self, msg: str) -> None:
        log.warning("fake-kubelet: %s", msg)
        self.errors.append(msg)
        del self.errors[:-50]

    @staticmethod
    def _check(r: httpx.Response, what: str, ok: Iterable[int] = ()) -> httpx.Response:
        if r.status_code >= 400 and r.status_code not in ok:
            raise FakeKubeletError(f"{what}: HTTP {r.status_code} {r.text[:500]}")
        return r

    # ----------------------------------------------------------- lifecycle
    def start(self, wait_ready: bool = True, timeout: float = 60.0) -> None:
        """Register the nodes, start the heartbeat and pod-watch threads and
        (by default) wait until the node-lifecycle controller has seen every
        node Ready (the ``not-ready`` taint is gone)."""
        if self._started:
            raise FakeKubeletError("already started")
        self._started = True
        self._stop.clear()
        self._http = self._client()
        specs, self._pending_specs = self._pending_specs, []
        for spec in specs:
            self.add_node(spec, wait_ready=False)
        for target, name in (
            (self._heartbeat_loop, "fake-kubelet-heartbeat"),
            (self._pod_loop, "fake-kubelet-pods"),
        ):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        if wait_ready:
            for n in self.node_names:
                self.wait_node_schedulable(n, timeout=timeout)

    def stop(self, delete_nodes: bool = False, timeout: float | None = None) -> None:
        """Stop all loops and join the threads. With *delete_nodes*, also
        delete the Node and Lease objects."""
        self._stop.set()
        self._interrupt_watch()
        join_timeout = (
            timeout
            if timeout is not None
            else self.watch_timeout_seconds + self.request_timeout + 5
        )
        for t in self._threads:
            t.join(join_timeout)
            if t.is_alive():  # pragma: no cover - should not happen
                log.error("fake-kubelet thread %s did not stop within %ss", t.name, join_timeout)
        self._threads.clear()
        if delete_nodes and self._started:
            for name in list(self._nodes):
                try:
                    self.remove_node(name)
                except Exception as e:
                    self._record_error(f"remove {name}: {e!r}")
        if self._started:
            self._http.close()
        self._started = False

    def _interrupt_watch(self) -> None:
        """Wake the pod-watch thread out of its blocking read (otherwise it
        notices the stop event when the server ends the watch, at most
        ``watch_timeout_seconds`` later)."""
        resp = self._watch_resp
        if resp is None:
            return
        try:
            stream = resp.extensions.get("network_stream")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
        except Exception:
            pass

    def __enter__(self) -> FakeKubelet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def node_names(self) -> list[str]:
        with self._lock:
            return list(self._nodes)

    def node_spec(self, name: str) -> NodeSpec:
        return self._nodes[name].spec

    # --------------------------------------------------------------- nodes
    def add_node(self, spec: NodeSpec, wait_ready: bool = True, timeout: float = 60.0) -> None:
        """Register (or re-register) a fake node and start heartbeating it."""
        if not self._started:
            self._pending_specs.append(spec)
            return
        with self._lock:
            if spec.name in self._nodes:
                raise FakeKubeletError(f"node {spec.name} already managed")
            idx = self._next_index
            self._next_index += 1
            st = _NodeState(
                spec=spec,
                index=idx,
                internal_ip=str(self._node_ip_base + 10 + idx),
                pod_net=ipaddress.IPv4Network(f"{self._pod_cidr_base + 256 * idx}/24"),
            )
            self._nodes[spec.name] = st
        self._register_node(st)
        self._renew_lease(st)
        st.last_beat = time.monotonic()
        if wait_ready:
            self.wait_node_schedulable(spec.name, timeout=timeout)

    def _node_conditions(self, st: _NodeState, ready: str) -> list[dict[str, Any]]:
        now = _now()
        reasons = {
            "True": ("KubeletReady", "kubelet is posting ready status"),
            "False": ("KubeletNotReady", "fake kubelet: node marked not ready"),
            "Unknown": ("NodeStatusUnknown", "Kubelet stopped posting node status."),
        }
        r, m = reasons[ready]
        conds = [
            {
                "type": t,
                "status": "False",
                "reason": f"KubeletHas{reason}",
                "message": msg,
                "lastHeartbeatTime": now,
                "lastTransitionTime": st.ready_since,
            }
            for t, reason, msg in (
                ("MemoryPressure", "SufficientMemory", "kubelet has sufficient memory available"),
                ("DiskPressure", "NoDiskPressure", "kubelet has no disk pressure"),
                ("PIDPressure", "SufficientPID", "kubelet has sufficient PID available"),
            )
        ]
        conds.append(
            {
                "type": "Ready",
                "status": ready,
                "reason": r,
                "message": m,
                "lastHeartbeatTime": now,
                "lastTransitionTime": st.ready_since,
            }
        )
        return conds

    def _node_status(self, st: _NodeState) -> dict[str, Any]:
        cap = st.spec.capacity()
        return {
            "capacity": cap,
            "allocatable": dict(cap),
            "conditions": self._node_conditions(st, st.ready_status),
            "addresses": [
                {"type": "InternalIP", "address": st.internal_ip},
                {"type": "Hostname", "address": st.spec.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": f"fake-{st.spec.name}",
                "systemUUID": f"fake-{st.spec.name}",
                "bootID": f"fake-{st.spec.name}",
                "kernelVersion": "5.15.0-fake",
                "osImage": "aicontract fake kubelet",
                "containerRuntimeVersion": "fake://1.0.0",
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": KUBELET_VERSION,
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def _register_node(self, st: _NodeState) -> None:
        spec = st.spec
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": spec.name,
                "labels": spec.all_labels(),
                "annotations": {ANNOTATION_MANAGED: "true", **spec.annotations},
            },
            "spec": {
                "podCIDR": str(st.pod_net),
                "podCIDRs": [str(st.pod_net)],
                "taints": list(spec.taints),
            },
            "status": self._node_status(st),
        }
        r = self._http.post("/api/v1/nodes", json=body)
        if r.status_code == 409:
            # Left over from an earlier run: take it over.
            patch = {
                "metadata": {
                    "labels": body["metadata"]["labels"],
                    "annotations": body["metadata"]["annotations"],
                },
                "spec": body["spec"],
            }
            self._check(
                self._http.patch(
                    f"/api/v1/nodes/{spec.name}", content=json.dumps(patch), headers=_SMP
                ),
                f"patch node {spec.name}",
            )
        else:
            self._check(r, f"create node {spec.name}")
        self._check(
            self._http.patch(
                f"/api/v1/nodes/{spec.name}/status",
                content=json.dumps({"status": body["status"]}),
                headers=_SMP,
            ),
            f"patch node status {spec.name}",
        )

    def _node_uid(self, name: str) -> str | None:
        r = self._http.get(f"/api/v1/nodes/{name}")
        return r.json()["metadata"]["uid"] if r.status_code == 200 else None

    def _renew_lease(self, st: _NodeState, client: httpx.Client | None = None) -> None:
        c = client or self._http
        name = st.spec.name
        path = f"/apis/coordination.k8s.io/v1/namespaces/{NODE_LEASE_NAMESPACE}/leases/{name}"
        spec = {
            "holderIdentity": name,
            "leaseDurationSeconds": self.lease_duration_seconds,
            "renewTime": _now_micro(),
        }
        r = c.patch(path, content=json.dumps({"spec": spec}), headers=_MERGE)
        if r.status_code != 404:
            self._check(r, f"renew lease {name}")
            return
        meta: dict[str, Any] = {"name": name, "namespace": NODE_LEASE_NAMESPACE}
        uid = self._node_uid(name)
        if uid:
            meta["ownerReferences"] = [
                {"apiVersion": "v1", "kind": "Node", "name": name, "uid": uid}
            ]
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": spec,
        }
        r = c.post(
            f"/apis/coordination.k8s.io/v1/namespaces/{NODE_LEASE_NAMESPACE}/leases", json=body
        )
        self._check(r, f"create lease {name}", ok=(409,))

    def _post_node_status(self, st: _NodeState, client: httpx.Client | None = None) -> None:
        c = client or self._http
        patch = {"status": {"conditions": self._node_conditions(st, st.ready_status)}}
        self._check(
            c.patch(
                f"/api/v1/nodes/{st.spec.name}/status", content=json.dumps(patch), headers=_SMP
            ),
            f"heartbeat {st.spec.name}",
        )

    def kill_node(self, name: str, ready: str | None = "Unknown") -> None:
        """Simulate a dead node: stop heartbeats (status + lease) and stop
        handling its pods. With *ready* (``"Unknown"`` or ``"False"``) also
        set its Ready condition right away; with ``None`` leave it to the
        node-lifecycle controller (Unknown after its grace period)."""
        if ready not in ("Unknown", "False", None):
            raise ValueError("ready must be 'Unknown', 'False' or None")
        st = self._nodes[name]
        with st.lock:
            with self._lock:
                st.alive = False
                if ready is not None:
                    st.ready_status = ready
                    st.ready_since = _now()
            if ready is not None:
                self._post_node_status(st)

    def revive_node(self, name: str, wait_ready: bool = True, timeout: float = 60.0) -> None:
        """Undo :meth:`kill_node`: Ready=True and heartbeats again."""
        st = self._nodes[name]
        with st.lock:
            with self._lock:
                if st.ready_status != "True":
                    st.ready_status = "True"
                    st.ready_since = _now()
                st.alive = True
            self._renew_lease(st)
            self._post_node_status(st)
            st.last_beat = time.monotonic()
        if wait_ready:
            self.wait_node_schedulable(name, timeout=timeout)

    def remove_node(self, name: str) -> None:
        """Stop managing *name* and delete its Node and Lease."""
        with self._lock:
            st = self._nodes.pop(name, None)
        if st is None:
            raise KeyError(name)
        self._check(self._http.delete(f"/api/v1/nodes/{name}"), f"delete node {name}", ok=(404,))
        self._check(
            self._http.delete(
                f"/apis/coordination.k8s.io/v1/namespaces/{NODE_LEASE_NAMESPACE}/leases/{name}"
            ),
            f"delete lease {name}",
            ok=(404,),
        )

    def get_node(self, name: str) -> dict[str, Any]:
        return self._check(self._http.get(f"/api/v1/nodes/{name}"), f"get node {name}").json()

    def node_ready_status(self, name: str) -> str | None:
        """The Ready condition's status as the API server has it."""
        for c in self.get_node(name).get("status", {}).get("conditions", []):
            if c.get("type") == "Ready":
                return c.get("status")
        return None

    def wait_node_schedulable(self, name: str, timeout: float = 60.0) -> None:
        """Wait until the node is Ready and the node-lifecycle controller has
        removed its ``node.kubernetes.io/not-ready``/``unreachable`` taints."""
        deadline = time.monotonic() + timeout
        while True:
            node = self.get_node(name)
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in node.get("status", {}).get("conditions", [])
            )
            taints = [t.get("key") for t in node.get("spec", {}).get("taints", []) or []]
            if ready and not any(
                k in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
                for k in taints
            ):
                return
            if time.monotonic() > deadline:
                raise FakeKubeletError(
                    f"node {name} not schedulable after {timeout}s (ready={ready}, taints={taints})"
                )
            if self._stop.wait(0.2):
                raise FakeKubeletError("stopped")

    def wait_node_ready_status(self, name: str, status: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.node_ready_status(name) != status:
            if time.monotonic() > deadline:
                raise FakeKubeletError(f"node {name} Ready!={status} after {timeout}s")
            time.sleep(0.2)

    # ---------------------------------------------------------- heartbeat
    def _heartbeat_loop(self) -> None:
        client = self._client()
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                with self._lock:
                    due = [
                        st
                        for st in self._nodes.values()
                        if st.alive and now - st.last_beat >= self.heartbeat_interval
                    ]
                    completions = [(uid, v) for uid, v in self._completions.items() if v[0] <= now]
                    deletions = [(uid, v) for uid, v in self._deletions.items() if v[0] <= now]
                for st in due:
                    if self._stop.is_set():
                        break
                    try:
                        with st.lock:
                            with self._lock:
                                alive = st.alive and st.spec.name in self._nodes
                            if alive:
                                self._renew_lease(st, client)
                                self._post_node_status(st, client)
                                st.last_beat = time.monotonic()
                    except Exception as e:
                        self._record_error(f"heartbeat {st.spec.name}: {e!r}")
                for uid, (_, ns, name) in deletions:
                    with self._lock:
                        self._deletions.pop(uid, None)
                    try:
                        self._finalise_deletion(client, ns, name, uid)
                    except Exception as e:
                        self._record_error(f"finalise deletion {ns}/{name}: {e!r}")
                for uid, (_, ns, name, code) in completions:
                    with self._lock:
                        self._completions.pop(uid, None)
                    try:
                        self.complete_pod(ns, name, code, client=client, uid=uid)
                    except Exception as e:
                        self._record_error(f"complete {ns}/{name}: {e!r}")
                self._stop.wait(0.25)
        finally:
            client.close()

    # ---------------------------------------------------------------- pods
    def _pod_loop(self) -> None:
        client = self._client(read_timeout=self.watch_timeout_seconds + 10)
        rv: str | None = None
        try:
            while not self._stop.is_set():
                try:
                    if rv is None:
                        r = self._check(client.get("/api/v1/pods"), "list pods")
                        data = r.json()
                        for pod in data.get("items") or []:
                            self._handle_pod(client, pod)
                        rv = data["metadata"]["resourceVersion"]
                    rv = self._watch_pods(client, rv)
                except Exception as e:
                    if self._stop.is_set():
                        break
                    self._record_error(f"pod watch: {e!r}")
                    rv = None
                    self._stop.wait(1.0)
        finally:
            client.close()

    def _watch_pods(self, client: httpx.Client, rv: str) -> str | None:
        params = {
            "watch": "true",
            "resourceVersion": rv,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self.watch_timeout_seconds),
        }
        with client.stream("GET", "/api/v1/pods", params=params) as resp:
            self._watch_resp = resp
            if self._stop.is_set():
                return rv
            if resp.status_code == 410:
                return None
            if resp.status_code >= 400:
                resp.read()
                raise FakeKubeletError(f"watch pods: HTTP {resp.status_code} {resp.text[:300]}")
            for line in resp.iter_lines():
                if not line.strip():
                    continue
                ev = json.loads(line)
                typ, obj = ev.get("type"), ev.get("object") or {}
                if typ == "ERROR":
                    if obj.get("code") == 410:
                        return None  # expired: re-list
                    raise FakeKubeletError(f"watch error: {obj}")
                new_rv = (obj.get("metadata") or {}).get("resourceVersion")
                if new_rv:
                    rv = new_rv
                if typ in ("ADDED", "MODIFIED"):
                    try:
                        self._handle_pod(client, obj)
                    except Exception as e:
                        self._record_error(
                            f"handle pod {obj.get('metadata', {}).get('name')}: {e!r}"
                        )
                elif typ == "DELETED":
                    with self._lock:
                        self._completions.pop(obj.get("metadata", {}).get("uid", ""), None)
                if self._stop.is_set():
                    break
        self._watch_resp = None
        return rv

    def _alive_node(self, name: str | None) -> _NodeState | None:
        if not name:
            return None
        with self._lock:
            st = self._nodes.get(name)
            return st if st is not None and st.alive else None

    def _handle_pod(self, client: httpx.Client, pod: dict[str, Any]) -> None:
        st = self._alive_node((pod.get("spec") or {}).get("nodeName"))
        if st is None:
            return
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        if meta.get("deletionTimestamp"):
            if self.deletion_delay > 0:
                with self._lock:
                    self._deletions.setdefault(
                        uid, (time.monotonic() + self.deletion_delay, ns, name)
                    )
                return
            self._finalise_deletion(client, ns, name, uid)
            return
        status = pod.get("status") or {}
        if status.get("phase") not in (None, "", "Pending") or status.get("podIP"):
            return
        self._set_running(client, st, pod)

    def _finalise_deletion(self, client: httpx.Client, ns: str, name: str, uid: str) -> None:
        """What a kubelet does once the containers are gone: remove the pod for good."""
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": uid},
        }
        r = client.request("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}", json=body)
        self._check(r, f"delete pod {ns}/{name}", ok=(404, 409))
        if r.status_code < 400:
            self.pods_deleted += 1

    def _alloc_ip(self, st: _NodeState) -> str:
        with self._lock:
            n = st.next_ip
            st.next_ip = 2 if n >= 254 else n + 1
        return str(st.pod_net.network_address + n)

    def _set_running(self, client: httpx.Client, st: _NodeState, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        ns, name = meta["namespace"], meta["name"]
        now = _now()
        ip = st.internal_ip if spec.get("hostNetwork") else self._alloc_ip(st)

        def cstatus(c: dict[str, Any], i: int, init: bool) -> dict[str, Any]:
            s: dict[str, Any] = {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": f"fake://{c.get('image', '')}",
                "containerID": f"fake://{meta['uid']}/{c['name']}",
                "restartCount": 0,
            }
            if init:
                s.update(
                    ready=True,
                    state={
                        "terminated": {
                            "exitCode": 0,
                            "reason": "Completed",
                            "startedAt": now,
                            "finishedAt": now,
                            "containerID": s["containerID"],
                        }
                    },
                )
            else:
                s.update(ready=True, started=True, state={"running": {"startedAt": now}})
            return s

        status = {
            "phase": "Running",
            "hostIP": st.internal_ip,
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": now,
            "conditions": [
                {"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": now}
                for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
            ],
            "containerStatuses": [
                cstatus(c, i, False) for i, c in enumerate(spec.get("containers") or [])
            ],
        }
        if spec.get("initContainers"):
            status["initContainerStatuses"] = [
                cstatus(c, i, True) for i, c in enumerate(spec["initContainers"])
            ]
        r = client.patch(
            f"/api/v1/namespaces/{ns}/pods/{name}/status",
            content=json.dumps({"status": status}),
            headers=_SMP,
        )
        if r.status_code == 404:
            return
        self._check(r, f"set pod {ns}/{name} running")
        self.pods_started += 1
        ann = meta.get("annotations") or {}
        if ANNOTATION_EXIT_AFTER in ann and spec.get("restartPolicy", "Always") != "Always":
            try:
                after = float(ann[ANNOTATION_EXIT_AFTER])
                code = int(ann.get(ANNOTATION_EXIT_CODE, "0"))
            except ValueError:
                self._record_error(f"bad exit annotations on {ns}/{name}: {ann}")
                return
            with self._lock:
                self._completions[meta["uid"]] = (time.monotonic() + after, ns, name, code)

    def set_pod_ready(self, namespace: str, name: str, ready: bool) -> None:
        """Flip a running pod's Ready/ContainersReady conditions, as a readiness probe
        that starts (or stops) failing does; the pod keeps running."""
        now = _now()
        value = "True" if ready else "False"
        conditions = [
            {"type": t, "status": value, "lastProbeTime": None, "lastTransitionTime": now}
            for t in ("Ready", "ContainersReady")
        ]
        r = self._http.patch(
            f"/api/v1/namespaces/{namespace}/pods/{name}/status",
            content=json.dumps({"status": {"conditions": conditions}}),
            headers=_SMP,
        )
        self._check(r, f"set pod {namespace}/{name} ready={ready}")

    def complete_pod(
        self,
        namespace: str,
        name: str,
        exit_code: int = 0,
        *,
        client: httpx.Client | None = None,
        uid: str | None = None,
    ) -> None:
        """Terminate all containers of a pod with *exit_code*: phase becomes
        ``Succeeded`` (0) or ``Failed`` (non-zero)."""
        c = client or self._http
        r = c.get(f"/api/v1/namespaces/{namespace}/pods/{name}")
        if r.status_code == 404:
            return
        pod = self._check(r, f"get pod {namespace}/{name}").json()
        if uid and pod["metadata"]["uid"] != uid:
            return
        now = _now()
        old = {s["name"]: s for s in (pod.get("status") or {}).get("containerStatuses") or []}
        statuses = []
        for ctr in pod["spec"].get("containers") or []:
            prev = old.get(ctr["name"], {})
            started = ((prev.get("state") or {}).get("running") or {}).get("startedAt", now)
            cid = prev.get("containerID", f"fake://{pod['metadata']['uid']}/{ctr['name']}")
            statuses.append(
                {
                    "name": ctr["name"],
                    "image": ctr.get("image", ""),
                    "imageID": f"fake://{ctr.get('image', '')}",
                    "containerID": cid,
                    "restartCount": prev.get("restartCount", 0),
                    "ready": False,
                    "started": False,
                    "state": {
                        "terminated": {
                            "exitCode": exit_code,
                            "reason": "Completed" if exit_code == 0 else "Error",
                            "startedAt": started,
                            "finishedAt": now,
                            "containerID": cid,
                        }
                    },
                }
            )
        reason = "PodCompleted"
        status = {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": reason,
                    "lastProbeTime": None,
                    "lastTransitionTime": now,
                },
                {
                    "type": "ContainersReady",
                    "status": "False",
                    "reason": reason,
                    "lastProbeTime": None,
                    "lastTransitionTime": now,
                },
            ],
            "containerStatuses": statuses,
        }
        r = c.patch(
            f"/api/v1/namespaces/{namespace}/pods/{name}/status",
            content=json.dumps({"status": status}),
            headers=_SMP,
        )
        self._check(r, f"complete pod {namespace}/{name}", ok=(404,))
