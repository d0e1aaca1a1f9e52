"""Start and stop a real, local Kubernetes control plane for integration tests.

What runs (all bound to 127.0.0.1, each process in its own process group,
logs in files under the cluster's work dir):

* ``etcd`` (from Debian's ``etcd-server``), data dir in a temp dir;
* ``kube-apiserver`` (secure port only, self-signed CA generated at runtime,
  static token auth, RBAC authorization);
* ``kube-scheduler``;
* ``kube-controller-manager`` (all default controllers, service-account
  credentials, garbage collector, job, namespace, node lifecycle, ...).

There is no kubelet: ``fake_kubelet.FakeKubelet`` plays that role.

Binaries are looked up in ``$AICONTRACT_K8S_BIN``, else in the cache dir
written by ``.ci/k8s-cluster.sh`` (``$AICONTRACT_K8S_CACHE`` or
``~/.cache/aicontract/k8s-v1.20.2``), else on ``$PATH``.

Only the standard library, the ``openssl`` CLI and ``httpx`` are needed.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import ipaddress
import logging
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger("aicontract.tests.k8s.harness")

K8S_VERSION = "1.20.2"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
ENV_BIN = "AICONTRACT_K8S_BIN"
ENV_CACHE = "AICONTRACT_K8S_CACHE"
ENV_KEEP = "AICONTRACT_K8S_KEEP_WORKDIR"

ADMIN_USER = "aicontract-test-admin"
LIMITED_USER = "aicontract-test-limited"


def default_cache_dir() -> Path:
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "aicontract" / f"k8s-v{K8S_VERSION}"


def find_binaries(
    bin_dir: str | os.PathLike[str] | None = None,
) -> tuple[dict[str, Path | None], str]:
    """Locate the control-plane binaries: in *bin_dir* if given, else in
    ``$AICONTRACT_K8S_BIN`` if set, else in the cache dir, else on ``$PATH``.

    Returns ``(paths, source)`` where *paths* maps each name in
    :data:`BINARIES` to a path (or ``None`` if not found) and *source*
    describes where they were searched.
    """
    if bin_dir is not None:
        d = Path(bin_dir).expanduser()
        return {b: (d / b if _is_exe(d / b) else None) for b in BINARIES}, str(d)
    env = os.environ.get(ENV_BIN)
    if env:
        d = Path(env).expanduser()
        return {b: (d / b if _is_exe(d / b) else None) for b in BINARIES}, f"${ENV_BIN}={d}"
    cache = default_cache_dir()
    found: dict[str, Path | None] = {}
    for b in BINARIES:
        if _is_exe(cache / b):
            found[b] = cache / b
        else:
            w = shutil.which(b)
            found[b] = Path(w) if w else None
    return found, f"cache dir {cache} or $PATH"


def _is_exe(p: Path) -> bool:
    return p.is_file() and os.access(p, os.X_OK)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ClusterError(RuntimeError):
    pass


try:  # resolved in the parent: no dlopen() between fork and exec
    _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):  # pragma: no cover
    _prctl = None


def _child_setup() -> None:  # pragma: no cover - runs in the child
    """Child side of fork: own session/process group, and (Linux) get
    SIGKILLed if the test process dies without calling ``stop()``."""
    os.setsid()
    if _prctl is not None:
        PR_SET_PDEATHSIG = 1
        _prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path
    log_file: Any = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "<no log>"
        return "\n".join(lines[-n:])


@dataclass
class Cluster:
    """A local etcd + kube-apiserver + kube-scheduler + kube-controller-manager.

    Usage::

        ok, reason = Cluster.available()
        cluster = Cluster()
        cluster.start()
        try:
            ...  # cluster.server, cluster.token, cluster.ca_path, cluster.kubeconfig
        finally:
            cluster.stop()

    Attributes available after :meth:`start`:

    ``server``      ``https://127.0.0.1:<port>``
    ``token``       bearer token of an admin user (group ``system:masters``)
    ``ca_path``     PEM file of the CA that signed the API server's certificate
    ``kubeconfig``  kubeconfig file (CA embedded, token user), context ``aicontract-test``
    ``workdir``     directory with certs, kubeconfigs, etcd data and ``logs/``
    """

    workdir: Path | None = None
    bin_dir: Path | None = None
    service_cidr: str = "10.96.0.0/16"
    cluster_name: str = "aicontract-test"
    # Node-lifecycle timing (kube-controller-manager); short so tests that
    # stop heartbeating a node see it go NotReady/Unknown quickly.
    node_monitor_period: str = "2s"
    node_monitor_grace_period: str = "20s"
    extra_apiserver_args: list[str] = field(default_factory=list)
    extra_controller_manager_args: list[str] = field(default_factory=list)
    extra_scheduler_args: list[str] = field(default_factory=list)
    # Alpha/beta gates turned on for apiserver + controller-manager.
    # TTLAfterFinished (Job ttlSecondsAfterFinished) is alpha in 1.20 but GA
    # in the Kubernetes versions users actually run.
    feature_gates: dict[str, bool] = field(default_factory=lambda: {"TTLAfterFinished": True})
    verbosity: int = 1
    # Put etcd's data dir on /dev/shm when it has room (fsync is free there).
    etcd_on_tmpfs: bool = True
    startup_timeout: float = 90.0

    # runtime state
    server: str = field(default="", init=False)
    token: str = field(default="", init=False)
    limited_token: str = field(default="", init=False)
    limited_kubeconfig: Path = field(default=None, init=False)  # type: ignore[assignment]
    ca_path: Path = field(default=None, init=False)  # type: ignore[assignment]
    kubeconfig: Path = field(default=None, init=False)  # type: ignore[assignment]
    etcd_url: str = field(default="", init=False)
    processes: dict[str, _Proc] = field(default_factory=dict, init=False)
    _own_workdir: bool = field(default=False, init=False)
    _etcd_dir: Path | None = field(default=None, init=False)
    _own_etcd_dir: bool = field(default=False, init=False)
    _bins: dict[str, Path] = field(default_factory=dict, init=False)
    _component_tokens: dict[str, str] = field(default_factory=dict, init=False)
    _atexit: bool = field(default=False, init=False)
    _apiserver_args: list[str] = field(default_factory=list, init=False)

    # ------------------------------------------------------------------ api
    @staticmethod
    def available(bin_dir: str | os.PathLike[str] | None = None) -> tuple[bool, str]:
        """``(True, "")`` if every binary (and ``openssl``) is there, else
        ``(False, reason)``."""
        found, where = find_binaries(bin_dir)
        missing = [b for b, p in found.items() if p is None]
        if missing:
            return False, (
                f"Kubernetes test binaries not found ({', '.join(missing)}) in {where}; "
                "run .ci/k8s-cluster.sh and/or set AICONTRACT_K8S_BIN to the directory it prints"
            )
        if shutil.which("openssl") is None:
            return False, "the openssl CLI is required to generate test certificates"
        return True, ""

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def logs_dir(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "logs"

    def client(self, **kwargs: Any) -> httpx.Client:
        """An ``httpx.Client`` for the API server, authenticated as admin."""
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return httpx.Client(
            base_url=self.server,
            verify=self.ssl_context(),
            headers=headers,
            timeout=kwargs.pop("timeout", 30.0),
            **kwargs,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """An SSL context trusting the cluster CA (for ``httpx``'s ``verify``)."""
        return ssl.create_default_context(cafile=str(self.ca_path))

    def start(self) -> None:
        if self.processes:
            raise ClusterError("cluster already started")
        ok, reason = self.available(self.bin_dir)
        if not ok:
            raise ClusterError(reason)
        found, _ = find_binaries(self.bin_dir)
        self._bins = {k: v for k, v in found.items() if v is not None}

        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="aicontract-k8s-"))
            self._own_workdir = True
        else:
            self.workdir = Path(self.workdir)
            self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(exist_ok=True)
        if not self._atexit:
            atexit.register(self.stop)
            self._atexit = True

        t0 = time.monotonic()
        try:
            self._make_pki()
            self._start_etcd()
            self._start_apiserver()
            self._start_controllers()
            self._wait_default_service_account()
        except BaseException:
            self.stop()
            raise
        log.info(
            "k8s control plane up in %.1fs at %s (workdir %s)",
            time.monotonic() - t0,
            self.server,
            self.workdir,
        )

    def stop(self) -> None:
        """Stop all processes by PID (SIGTERM, then SIGKILL) and clean up."""
        for name in ("kube-controller-manager", "kube-scheduler", "kube-apiserver", "etcd"):
            proc = self.processes.pop(name, None)
            if proc is not None:
                _terminate(proc)
        for proc in list(self.processes.values()):
            _terminate(proc)
        self.processes.clear()
        if self._own_etcd_dir and self._etcd_dir is not None:
            shutil.rmtree(self._etcd_dir, ignore_errors=True)
            self._etcd_dir = None
        if self._own_workdir and self.workdir is not None and not os.environ.get(ENV_KEEP):
            shutil.rmtree(self.workdir, ignore_errors=True)
            self._own_workdir = False

    # ---------------------------------------------------------------- pki
    def _openssl(self, *args: str) -> None:
        r = subprocess.run(["openssl", *args], cwd=self.pki_dir, capture_output=True, text=True)
        if r.returncode != 0:
            raise ClusterError(f"openssl {' '.join(args)} failed: {r.stderr.strip()}")

    @property
    def pki_dir(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "pki"

    def _make_pki(self) -> None:
        pki = self.pki_dir
        pki.mkdir(exist_ok=True)
        # CA
        self._openssl("genrsa", "-out", "ca.key", "2048")
        self._openssl(
            "req",
            "-x509",
            "-new",
            "-nodes",
            "-key",
            "ca.key",
            "-sha256",
            "-days",
            "3650",
            "-subj",
            "/CN=aicontract-test-ca",
            "-out",
            "ca.crt",
        )
        # API server serving cert
        first_ip = next(ipaddress.ip_network(self.service_cidr).hosts())
        sans = [
            "IP:127.0.0.1",
            f"IP:{first_ip}",
            "DNS:localhost",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
        ]
        (pki / "apiserver.ext").write_text(
            "basicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
            f"subjectAltName={','.join(sans)}\n"
        )
        self._openssl("genrsa", "-out", "apiserver.key", "2048")
        self._openssl(
            "req",
            "-new",
            "-key",
            "apiserver.key",
            "-subj",
            "/CN=kube-apiserver",
            "-out",
            "apiserver.csr",
        )
        self._openssl(
            "x509",
            "-req",
            "-in",
            "apiserver.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "3650",
            "-sha256",
            "-extfile",
            "apiserver.ext",
            "-out",
            "apiserver.crt",
        )
        # Service-account signing key pair
        self._openssl("genrsa", "-out", "sa.key", "2048")
        self._openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")

        # Static tokens: admin + one identity per control-plane component
        self.token = secrets.token_hex(24)
        self._component_tokens = {
            "kube-scheduler": secrets.token_hex(24),
            "kube-controller-manager": secrets.token_hex(24),
        }
        # A second identity with no rights at all: tests grant it what they need (RBAC).
        self.limited_token = secrets.token_hex(24)
        lines = [
            f'{self.token},{ADMIN_USER},{ADMIN_USER},"system:masters"',
            f"{self.limited_token},{LIMITED_USER},{LIMITED_USER}",
        ]
        lines.append(
            f"{self._component_tokens['kube-scheduler']},system:kube-scheduler,system:kube-scheduler"
        )
        lines.append(
            f"{self._component_tokens['kube-controller-manager']},"
            "system:kube-controller-manager,system:kube-controller-manager"
        )
        tokens = pki / "tokens.csv"
        tokens.write_text("\n".join(lines) + "\n")
        for p in pki.iterdir():
            p.chmod(0o600)
        self.ca_path = pki / "ca.crt"

    def _write_kubeconfig(self, path: Path, user: str, token: str) -> Path:
        ca_b64 = base64.b64encode(self.ca_path.read_bytes()).decode()
        ctx = self.cluster_name
        path.write_text(
            "apiVersion: v1\n"
            "kind: Config\n"
            "clusters:\n"
            f"- name: {ctx}\n"
            "  cluster:\n"
            f"    server: {self.server}\n"
            f"    certificate-authority-data: {ca_b64}\n"
            "users:\n"
            f"- name: {user}\n"
            "  user:\n"
            f"    token: {token}\n"
            "contexts:\n"
            f"- name: {ctx}\n"
            "  context:\n"
            f"    cluster: {ctx}\n"
            f"    user: {user}\n"
            "    namespace: default\n"
            f"current-context: {ctx}\n"
        )
        path.chmod(0o600)
        return path

    def client_cert_kubeconfig(
        self,
        path: Path,
        common_name: str,
        organisations: tuple[str, ...] = (),
        *,
        inline: bool = True,
        entry: str = "cert-user",
    ) -> Path:
        """A kubeconfig that authenticates with a client certificate the cluster's CA
        signed: the API server's user is ``common_name``, its groups ``organisations``.

        ``inline`` writes ``client-certificate-data``/``client-key-data``; otherwise the
        files sit next to ``path`` and the kubeconfig names them by relative path.
        ``entry`` is the kubeconfig's name for the user (not what the server sees).
        """
        subject = f"/CN={common_name}" + "".join(f"/O={o}" for o in organisations)
        stem = path.with_suffix("")
        key, csr, crt = (stem.with_suffix(ext) for ext in (".key", ".csr", ".crt"))
        self._openssl("genrsa", "-out", str(key), "2048")
        self._openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
        self._openssl(
            "x509", "-req", "-in", str(csr), "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-sha256", "-out", str(crt),
        )  # fmt: skip
        if inline:
            credentials = (
                f"    client-certificate-data: {base64.b64encode(crt.read_bytes()).decode()}\n"
                f"    client-key-data: {base64.b64encode(key.read_bytes()).decode()}\n"
            )
        else:
            credentials = f"    client-certificate: {crt.name}\n    client-key: {key.name}\n"
        ca_b64 = base64.b64encode(self.ca_path.read_bytes()).decode()
        ctx = self.cluster_name
        path.write_text(
            "apiVersion: v1\nkind: Config\nclusters:\n"
            f"- name: {ctx}\n  cluster:\n    server: {self.server}\n"
            f"    certificate-authority-data: {ca_b64}\n"
            f"users:\n- name: {entry}\n  user:\n{credentials}"
            f"contexts:\n- name: {ctx}\n  context:\n    cluster: {ctx}\n    user: {entry}\n"
            f"current-context: {ctx}\n"
        )
        path.chmod(0o600)
        return path

    # ------------------------------------------------------------ processes
    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> _Proc:
        log_path = self.logs_dir / f"{name}.log"
        logf = open(log_path, "ab")  # noqa: SIM115 - stays open for the process's life
        cmd = [str(self._bins[name]), *args]
        logf.write(("$ " + " ".join(cmd) + "\n").encode())
        logf.flush()
        popen = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            cwd=str(self.workdir),
            env=env if env is not None else _clean_env(),
            preexec_fn=_child_setup,
        )
        proc = _Proc(name=name, popen=popen, log_path=log_path, log_file=logf)
        self.processes[name] = proc
        log.debug("started %s pid=%s", name, popen.pid)
        return proc

    def _wait_http(
        self,
        proc: _Proc,
        url: str,
        *,
        verify: Any,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> None:
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        last = ""
        with httpx.Client(verify=verify, timeout=5.0, headers=headers or {}) as c:
            while True:
                if proc.popen.poll() is not None:
                    raise ClusterError(
                        f"{proc.name} exited with {proc.popen.returncode} during startup;"
                        f" log tail:\n{proc.log_tail()}"
                    )
                try:
                    r = c.get(url)
                    if r.status_code == 200:
                        return
                    last = f"HTTP {r.status_code}: {r.text[:300]}"
                except httpx.HTTPError as e:
                    last = repr(e)
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"{proc.name} not healthy at {url}"
                        f" after {timeout or self.startup_timeout}s ({last}); "
                        f"log tail:\n{proc.log_tail()}"
                    )
                time.sleep(0.2)

    def _start_etcd(self) -> None:
        assert self.workdir is not None
        data = None
        if self.etcd_on_tmpfs and os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
            try:
                st = os.statvfs("/dev/shm")
                if st.f_bavail * st.f_frsize > 1 << 30:
                    data = Path(tempfile.mkdtemp(prefix="aicontract-etcd-", dir="/dev/shm"))
                    self._own_etcd_dir = True
            except OSError:
                data = None
        if data is None:
            data = self.workdir / "etcd-data"
            data.mkdir(exist_ok=True)
        data.chmod(0o700)
        self._etcd_dir = data
        client_port, peer_port = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client_port}"
        peer = f"http://127.0.0.1:{peer_port}"
        env = {k: v for k, v in _clean_env().items() if not k.startswith("ETCD")}
        proc = self._spawn(
            "etcd",
            [
                "--name=aicontract-test",
                f"--data-dir={data}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=aicontract-test={peer}",
                "--initial-cluster-state=new",
                "--initial-cluster-token=aicontract-test",
                "--logger=zap",
                "--log-level=warn",
                "--snapshot-count=100000",
                "--quota-backend-bytes=2147483648",
            ],
            env=env,
        )
        self._wait_http(proc, f"{self.etcd_url}/health", verify=False)

    def _start_apiserver(self) -> None:
        pki = self.pki_dir
        port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        issuer = "https://kubernetes.default.svc.cluster.local"
        args = [
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={port}",
            "--insecure-port=0",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={pki / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            f"--service-cluster-ip-range={self.service_cidr}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-account-issuer={issuer}",
            f"--api-audiences={issuer}",
            # The 'kubernetes' Service would get 127.0.0.1 as endpoint, which
            # Endpoints validation rejects (loopback); nothing needs it here.
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--profiling=false",
            *self._feature_gate_args(),
            f"--v={self.verbosity}",
            *self.extra_apiserver_args,
        ]
        self._apiserver_args = args
        proc = self._spawn("kube-apiserver", args)
        self._wait_http(
            proc,
            f"{self.server}/readyz",
            verify=self.ssl_context(),
            headers={"Authorization": f"Bearer {self.token}"},
        )
        self.kubeconfig = self._write_kubeconfig(
            self.workdir / "kubeconfig", ADMIN_USER, self.token
        )  # type: ignore[operator]
        self.limited_kubeconfig = self._write_kubeconfig(
            self.workdir / "kubeconfig-limited", LIMITED_USER, self.limited_token
        )  # type: ignore[operator]

    def stop_apiserver(self) -> None:
        """Stop kube-apiserver by its PID (SIGTERM, then SIGKILL); etcd keeps the state."""
        proc = self.processes.pop("kube-apiserver", None)
        if proc is not None:
            _terminate(proc)

    def start_apiserver(self) -> None:
        """Start kube-apiserver again on the same port, and wait until it is ready.

        Call it from the thread that runs the tests, not a worker thread: the child
        is killed when the thread that started it ends (``PR_SET_PDEATHSIG``).
        """
        if "kube-apiserver" in self.processes:
            raise ClusterError("kube-apiserver is already running")
        proc = self._spawn("kube-apiserver", self._apiserver_args)
        self._wait_http(
            proc,
            f"{self.server}/readyz",
            verify=self.ssl_context(),
            headers={"Authorization": f"Bearer {self.token}"},
        )

    def restart_apiserver(self, down_for: float = 0.0) -> None:
        """Restart kube-apiserver by PID (as an upgrade or a crash does), down ``down_for`` s.

        From the tests' own thread (see :meth:`start_apiserver`).
        """
        self.stop_apiserver()
        time.sleep(down_for)
        self.start_apiserver()

    def _feature_gate_args(self) -> list[str]:
        if not self.feature_gates:
            return []
        gates = ",".join(
            f"{k}={'true' if v else 'false'}" for k, v in sorted(self.feature_gates.items())
        )
        return [f"--feature-gates={gates}"]

    def _start_controllers(self) -> None:
        assert self.workdir is not None
        pki = self.pki_dir
        kc_sched = self._write_kubeconfig(
            self.workdir / "scheduler.kubeconfig",
            "system:kube-scheduler",
            self._component_tokens["kube-scheduler"],
        )
        kc_cm = self._write_kubeconfig(
            self.workdir / "controller-manager.kubeconfig",
            "system:kube-controller-manager",
            self._component_tokens["kube-controller-manager"],
        )
        sched_port, cm_port = free_port(), free_port()
        sched = self._spawn(
            "kube-scheduler",
            [
                f"--kubeconfig={kc_sched}",
                "--bind-address=127.0.0.1",
                f"--secure-port={sched_port}",
                "--port=0",
                "--leader-elect=false",
                f"--cert-dir={self.workdir / 'scheduler-certs'}",
                f"--v={self.verbosity}",
                *self.extra_scheduler_args,
            ],
        )
        cm = self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={kc_cm}",
                "--bind-address=127.0.0.1",
                f"--secure-port={cm_port}",
                "--port=0",
                "--leader-elect=false",
                f"--cert-dir={self.workdir / 'controller-manager-certs'}",
                "--controllers=*",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                f"--cluster-name={self.cluster_name}",
                f"--service-cluster-ip-range={self.service_cidr}",
                f"--node-monitor-period={self.node_monitor_period}",
                f"--node-monitor-grace-period={self.node_monitor_grace_period}",
                *self._feature_gate_args(),
                f"--v={self.verbosity}",
                *self.extra_controller_manager_args,
            ],
        )
        # Their serving certs are self-signed in memory: health only.
        self._wait_http(sched, f"https://127.0.0.1:{sched_port}/healthz", verify=False)
        self._wait_http(cm, f"https://127.0.0.1:{cm_port}/healthz", verify=False)

    def _wait_default_service_account(self) -> None:
        """Block until the controller-manager has created the ``default``
        service account (and its token) in the ``default`` namespace, so
        pods can be created right away."""
        wait_for_service_account(self, "default", timeout=self.startup_timeout)

    # ------------------------------------------------------------- helpers
    def check_alive(self) -> None:
        for proc in self.processes.values():
            if proc.popen.poll() is not None:
                raise ClusterError(
                    f"{proc.name} died (rc={proc.popen.returncode}); log tail:\n{proc.log_tail()}"
                )


def wait_for_service_account(
    cluster: Cluster, namespace: str, name: str = "default", timeout: float = 60.0
) -> None:
    """Wait until service account *name* in *namespace* exists and has a
    token secret (required by the ServiceAccount admission plugin before a
    pod can be created in the namespace)."""
    deadline = time.monotonic() + timeout
    with cluster.client() as c:
        while True:
            r = c.get(f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}")
            if r.status_code == 200 and r.json().get("secrets"):
                return
            if time.monotonic() > deadline:
                cluster.check_alive()
                raise ClusterError(f"service account {namespace}/{name} not ready after {timeout}s")
            time.sleep(0.2)


def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    # Never let the components pick up a user's kubeconfig / proxies.
    for k in (
        "KUBECONFIG",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ):
        env.pop(k, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def _terminate(proc: _Proc, grace: float = 10.0) -> None:
    p = proc.popen
    try:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %s) ignored SIGTERM; sending SIGKILL", proc.name, p.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
                p.wait(timeout=grace)
    finally:
        if proc.log_file is not None:
            with contextlib.suppress(OSError):
                proc.log_file.close()
