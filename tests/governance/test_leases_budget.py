"""``aicontract leases`` shows each lease's spend against its contract's whole-run budget."""

from __future__ import annotations

import json
import time

import anyio
import pytest
from click.testing import CliRunner, Result

import aicontract as ac
from aicontract.backends.local import LocalBackend
from aicontract.cli import main
from aicontract.governance import Record
from aicontract.governance.enforce import contract_digest, record_path
from aicontract.negotiate import Negotiator


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _earlier_run(contract: ac.Contract, hours: float, price: str) -> None:
    """What the record holds after an earlier lease of the same contract (another backend)."""
    record = Record(record_path())
    end = time.time() - 60
    fields = {"contract": contract.name, "digest": contract_digest(contract), "tenant": "default"}
    record.append(
        "grant",
        end - hours * 3600,
        {**fields, "lease": "earlier", "gpus": 1, "price": price, "expires_at": end + 60},
    )
    record.append("end", end, {"lease": "earlier", "tenant": "default", "state": "released"})
    record.close()


def test_spend_against_budget_in_the_table_and_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    contract = ac.Contract(name="finetune", gpus=1, terms={"budget": "500 USD"})
    plain = ac.Contract(name="plain", gpus=1)
    _earlier_run(contract, hours=3, price="4.1 USD/h")  # 12.30 USD
    backend = LocalBackend()
    negotiator = Negotiator([backend])
    budgeted = anyio.run(negotiator.acquire, contract)
    other = anyio.run(negotiator.acquire, plain)
    try:
        table = run("leases").stdout
        row = next(line for line in table.splitlines() if budgeted.id in line)
        assert "12.30/500 USD" in row
        other_row = next(line for line in table.splitlines() if other.id in line)
        assert "USD" not in other_row
        listed = {item["id"]: item for item in json.loads(run("leases", "--json").stdout)}
        assert listed[budgeted.id]["budget"] == {
            "spent": "12.30",
            "limit": "500",
            "currency": "USD",
        }
        assert listed[other.id]["budget"] is None
    finally:
        anyio.run(budgeted.release)
        anyio.run(other.release)
        backend.ledger.close()


def test_without_a_record_the_spend_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AICONTRACT_RECORD", "off")
    monkeypatch.setenv("COLUMNS", "250")
    backend = LocalBackend()
    lease = anyio.run(
        Negotiator([backend]).acquire,
        ac.Contract(name="b", gpus=1, terms={"budget": "20 EUR"}),
    )
    try:
        assert "?/20 EUR" in run("leases").stdout
        (item,) = json.loads(run("leases", "--json").stdout)
        assert item["budget"] == {"spent": None, "limit": "20", "currency": "EUR"}
    finally:
        anyio.run(lease.release)
        backend.ledger.close()
