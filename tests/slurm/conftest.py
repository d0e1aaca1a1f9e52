"""pytest wiring for a private, real Slurm cluster on 127.0.0.1 (see .ci/slurm-cluster.sh).

* marker ``slurm``: tests that need the cluster; skipped, with the reason, when it
  cannot run here (not root, Debian's Slurm packages missing).
* fixture ``slurm_cluster`` (session): munged + slurmctld + two slurmd (``node1``,
  ``node2``, 4 fake ``gpu:h100`` each) + slurmrestd with JWT auth; stopped by PID.
  ``AICONTRACT_SLURM_DIR=<dir of a running cluster>`` reuses one started by hand.
* fixture ``clean_cluster``: cancels every job and resumes every node after a test.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

SLURM_MARKER = "slurm"
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "slurm-cluster.sh"
DAEMONS = ("munged", "slurmctld", "slurmd", "slurmrestd", "scontrol")
ENV_DIR = "AICONTRACT_SLURM_DIR"


def available() -> tuple[bool, str]:
    """Whether the cluster can start here, and why not."""
    if os.environ.get(ENV_DIR):
        return True, ""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False, "the Slurm test cluster runs its daemons as root (run the tests as root)"
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        return False, (
            f"Slurm is not installed ({', '.join(missing)} missing);"
            " run: bash .ci/slurm-cluster.sh install"
        )
    return True, ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    marked = [item for item in items if item.get_closest_marker(SLURM_MARKER)]
    if not marked:
        return
    ok, reason = available()
    if ok:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in marked:
        item.add_marker(skip)


@dataclass
class SlurmCluster:
    """What the ``slurm_cluster`` fixture yields."""

    dir: Path
    url: str
    token: str
    conf: Path

    def scontrol(self, *args: str) -> str:
        """Run ``scontrol`` against this cluster; its stdout."""
        done = subprocess.run(
            ["scontrol", *args],
            env={**os.environ, "SLURM_CONF": str(self.conf)},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"scontrol {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def client(self) -> httpx.Client:
        """A JWT-authenticated client on slurmrestd (as root)."""
        return httpx.Client(
            base_url=f"{self.url}/slurm/v0.0.38",
            headers={"X-SLURM-USER-NAME": "root", "X-SLURM-USER-TOKEN": self.token},
            timeout=30,
        )

    def jobs(self) -> list[dict[str, object]]:
        """Every job slurmctld knows now."""
        with self.client() as client:
            jobs: list[dict[str, object]] = client.get("/jobs").json()["jobs"]
            return jobs

    def live_jobs(self) -> list[dict[str, object]]:
        """Jobs that still hold or wait for resources."""
        return [
            j
            for j in self.jobs()
            if j["job_state"] in ("RUNNING", "PENDING", "COMPLETING", "CONFIGURING", "SUSPENDED")
        ]

    def node(self, name: str) -> dict[str, object]:
        """One node as slurmrestd shows it."""
        with self.client() as client:
            node: dict[str, object] = client.get(f"/node/{name}").json()["nodes"][0]
            return node

    def token_for(self, user: str) -> str:
        """A JWT for ``user`` (root may mint one for anyone)."""
        out = self.scontrol("token", f"username={user}", "lifespan=3600")
        return out.strip().removeprefix("SLURM_JWT=")

    def stop_slurmctld(self) -> None:
        """Stop the controller by the PID it wrote (TERM; it saves its state first)."""
        pid = int((self.dir / "slurmctld.pid").read_text())
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        raise RuntimeError(f"slurmctld (pid {pid}) did not stop")

    def start_slurmctld(self) -> None:
        """Start the controller again from its saved state; wait until it answers."""
        env = {**os.environ, "SLURM_CONF": str(self.conf)}
        subprocess.run(["slurmctld", "-f", str(self.conf)], env=env, check=True, timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ping = subprocess.run(
                ["scontrol", "ping"], env=env, capture_output=True, text=True, timeout=30
            )
            if ping.returncode == 0 and "UP" in ping.stdout:
                return
            time.sleep(0.2)
        raise RuntimeError("slurmctld did not answer after a restart")

    def reset(self) -> None:
        """Cancel every job, drop reservations, resume every node; wait until all is idle."""
        with self.client() as client:
            for job in self.live_jobs():
                client.delete(f"/job/{job['job_id']}")
            for resv in client.get("/reservations").json().get("reservations") or []:
                self.scontrol("delete", f"reservation={resv['name']}")
        for name in ("node1", "node2"):
            state = str(self.node(name)["state"]).lower()
            flags = [str(f).upper() for f in self.node(name).get("state_flags") or []]  # type: ignore[attr-defined]
            if state in ("down", "drain", "drained") or "DRAIN" in flags:
                self.scontrol("update", f"nodename={name}", "state=resume")
        # slurmctld 22.05 caches the per-node allocation that node lists report
        # (sinfo, slurmrestd) with one-second timestamps: a job that ends in the same
        # second as a node query can leave a node "mixed" until the next node change.
        # Judge idleness from the single-node view (fresh), then touch the nodes so
        # that the next list is fresh too.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            busy = self.live_jobs()
            shown = self.scontrol("show", "node", "node1", "-o") + self.scontrol(
                "show", "node", "node2", "-o"
            )
            if not busy and shown.count("State=IDLE ") == 2:
                self.scontrol("update", "nodename=node1,node2", f"comment=reset-{time.time()}")
                return
            time.sleep(0.3)
        nodes = [self.node(n) for n in ("node1", "node2")]
        raise RuntimeError(f"cluster not idle after reset: {nodes}, jobs {self.jobs()}")


def _read_env(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        out[key] = value
    return out


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    ok, reason = available()
    if not ok:
        pytest.skip(reason)
    given = os.environ.get(ENV_DIR)
    if given:
        directory = Path(given)
    else:
        done = subprocess.run(
            ["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            pytest.skip(f"the Slurm test cluster did not start: {done.stderr.strip()[-1500:]}")
        directory = Path(done.stdout.strip().splitlines()[-1])
    env = _read_env(directory / "env")
    cluster = SlurmCluster(
        dir=directory,
        url=env["SLURMRESTD_URL"],
        token=env["SLURM_JWT"],
        conf=Path(env["SLURM_CONF"]),
    )
    try:
        yield cluster
    finally:
        if not given:
            subprocess.run(["bash", str(SCRIPT), "stop", str(directory)], timeout=60, check=False)
            if not os.environ.get("AICONTRACT_SLURM_KEEP_WORKDIR"):
                shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def clean_cluster(slurm_cluster: SlurmCluster) -> Iterator[SlurmCluster]:
    """The session cluster, idle before the test and put back to idle after it."""
    slurm_cluster.reset()
    try:
        yield slurm_cluster
    finally:
        slurm_cluster.reset()
