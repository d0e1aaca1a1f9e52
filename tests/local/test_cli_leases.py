"""``aicontract inventory|quote|acquire|leases|release`` against a fake host.

Run in-process through click's runner; the environment (fixture ``local_env``)
points the CLI at the fake inventory and a private ledger, exactly as a user
would with ``AICONTRACT_INVENTORY`` and ``AICONTRACT_STATE_DIR``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner, Result

from aicontract import GPU, Contract, Negotiator
from aicontract.backends.local import LocalBackend
from aicontract.backends.local.ledger import Ledger
from aicontract.cli import main


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def contract_file(tmp_path: Path) -> Path:
    path = tmp_path / "one-h100.yaml"
    path.write_text("name: one\nresources:\n  gpus: {count: 1, models: [H100]}\n  cpus: 2\n")
    return path


@pytest.fixture
def too_big(tmp_path: Path) -> Path:
    path = tmp_path / "too-big.yaml"
    path.write_text("name: big\nresources:\n  gpus: {count: 8, models: [H100]}\n")
    return path


def test_inventory_json(local_env: Path) -> None:
    result = run("inventory", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert (data["cpus"], data["memory"]) == (8, "64GiB")
    assert [g["model"] for g in data["gpus"]][:2] == ["NVIDIA H100 80GB HBM3"] * 2


def test_inventory_table(local_env: Path) -> None:
    result = run("inventory")
    assert result.exit_code == 0
    assert "8 CPUs, 64GiB memory" in result.stdout
    assert "NVIDIA L4" in result.stdout


def test_inventory_table_shows_topology(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inventory = tmp_path / "hgx.yaml"
    inventory.write_text(
        "cpus: 64\nmemory: 2TiB\n"
        "numa:\n"
        "  - {id: 0, cpus: '0-31', memory: 1TiB}\n"
        "  - {id: 1, cpus: '32-47,56-63', memory: 1TiB}\n"
        "gpus:\n"
        "  - {model: H100, memory: 80GiB, numa: 0, nvlink_domain: hgx}\n"
        "  - {model: H100, memory: 80GiB, numa: 1, nvlink_domain: hgx}\n"
        "  - {model: L4, memory: 24GiB, numa: 1}\n"
        "links:\n  - {gpus: [1, 2], link: sys}\n"
        "nics:\n  - {name: mlx5_0, numa: 0, link_layer: InfiniBand}\n"
    )
    monkeypatch.setenv("AICONTRACT_INVENTORY", str(inventory))
    monkeypatch.setenv("COLUMNS", "200")
    result = run("inventory")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert any("0-31" in line and "1TiB" in line for line in lines)
    assert any("32-47,56-63" in line for line in lines)
    assert any(" hgx " in line and "H100" in line for line in lines)
    assert any("1 - 2" in line and "sys" in line for line in lines)
    assert any("mlx5_0" in line and "InfiniBand" in line for line in lines)


def test_inventory_without_gpus_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inventory = tmp_path / "cpu-only.yaml"
    inventory.write_text("cpus: 4\nmemory: 8GiB\n")
    monkeypatch.setenv("AICONTRACT_INVENTORY", str(inventory))
    result = run("inventory")
    assert result.exit_code == 0
    # "[nvidia]" must print as text, not vanish as rich markup.
    assert "aicontract[nvidia]" in result.stdout


def test_quote_shows_offers_and_declines(
    local_env: Path, contract_file: Path, too_big: Path
) -> None:
    offered = run("quote", str(contract_file))
    assert offered.exit_code == 0
    assert "offers" in offered.stdout
    assert "1 x H100 (80GiB), 2 CPUs" in offered.stdout
    declined = run("quote", str(too_big))
    assert declined.exit_code == 0
    assert "no acceptable offer" in declined.stdout
    assert "declined" in declined.stdout
    assert "resources.gpus.count" in declined.stdout
    # the offer's "[allocated, 0 USD/h]" must print as text, not vanish as rich markup
    assert "counter-offer: local: 2 x H100 (80GiB) in local [allocated, 0 USD/h]" in declined.stdout
    # and says what it gave up, as every backend's counter-offers do
    assert "(relaxed: resources.gpus.count 8 -> 2)" in declined.stdout


def test_quote_json(local_env: Path, contract_file: Path) -> None:
    data = json.loads(run("quote", "--json", str(contract_file)).stdout)
    (offer,) = data["offers"]
    assert offer["grant"]["gpus"] == 1
    assert "contract" not in offer
    assert data["rejections"] == []


def test_acquire_runs_the_command_under_the_lease(
    local_env: Path, contract_file: Path, tmp_path: Path
) -> None:
    seen = tmp_path / "seen.json"
    script = (
        "import json, os, sys; "
        f"json.dump({{k: os.environ.get(k) for k in ('CUDA_VISIBLE_DEVICES', 'AICONTRACT_CPUS',"
        f" 'CUDA_DEVICE_ORDER')}}, open({str(seen)!r}, 'w')); sys.exit(7)"
    )
    result = run("acquire", str(contract_file), "--", sys.executable, "-c", script)
    assert result.exit_code == 7  # the command's status passes through
    env = json.loads(seen.read_text())
    assert env == {
        "CUDA_VISIBLE_DEVICES": "0",
        "AICONTRACT_CPUS": "0,1",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    }
    assert "leased" in result.stderr
    assert Ledger.in_dir(local_env).records() == []  # released after the command


def test_acquire_unsatisfiable_exits_1_with_the_reasons(local_env: Path, too_big: Path) -> None:
    result = run("acquire", str(too_big), "--", sys.executable, "-c", "pass")
    assert result.exit_code == 1
    assert "no offer satisfies contract 'big'" in result.stderr
    assert "local: resources.gpus.count wants 8 x H100" in result.stderr
    assert "[allocated, 0 USD/h]" in result.stderr  # the counter-offer, in full
    assert "[bold red]" not in result.stderr  # markup is styled, not printed


def test_bad_contract_file_exits_2(local_env: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("resources: {gpus: {count: 0}}\n")
    result = run("acquire", str(bad))
    assert result.exit_code == 2
    assert "$.resources.gpus.count" in result.stderr


@pytest.fixture
def held(local_env: Path):  # type: ignore[no-untyped-def]
    """A lease held by this process, as another program on the host would hold one."""
    contract = Contract(name="held", gpus=GPU(count=1, models=["L4"]))
    backend = LocalBackend()
    lease = anyio.run(Negotiator([backend]).acquire, contract)
    yield lease
    anyio.run(lease.release)
    backend.ledger.close()


def test_leases_lists_what_is_held(held) -> None:  # type: ignore[no-untyped-def]
    table = run("leases")
    assert table.exit_code == 0
    assert held.id in table.stdout
    assert "gpus=4" in table.stdout
    (record,) = json.loads(run("leases", "--json").stdout)
    assert (record["id"], record["grant"]["gpu_model"]) == (held.id, "L4")


def test_leases_never_shortens_an_id(held, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("COLUMNS", "60")  # a narrow terminal
    assert held.id in run("leases").stdout  # whole, so it can be pasted into `release`


def test_leases_when_none(local_env: Path) -> None:
    assert "no leases held on this host" in run("leases").stdout


def test_release_by_id(held, local_env: Path) -> None:  # type: ignore[no-untyped-def]
    result = run("release", held.id)
    assert result.exit_code == 0
    assert f"released {held.id}" in result.stdout
    assert Ledger.in_dir(local_env).records() == []
    again = run("release", held.id)
    assert again.exit_code == 1
    assert f"no such lease: {held.id}" in again.stderr


def test_release_unknown_id_exits_1(local_env: Path) -> None:
    result = run("release", "no-such-id")
    assert result.exit_code == 1
    assert "no such lease: no-such-id" in result.stderr


def test_ctrl_c_releases_the_lease_and_exits_130(local_env: Path, contract_file: Path) -> None:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) releases the
    lease and exits 130, distinct from 1 ("no offer")."""
    import os
    import signal
    import subprocess

    holder = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aicontract",
            "acquire",
            str(contract_file),
            "--",
            sys.executable,
            "-c",
            "import time; print('working', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "working"  # the lease is held now
        os.killpg(holder.pid, signal.SIGINT)
        assert holder.wait(timeout=60) == 130
    finally:
        if holder.poll() is None:
            holder.kill()
    assert LocalBackend().ledger.records() == []
