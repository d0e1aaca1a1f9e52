"""No secret enters the record: environment values, labels and commands stay out of it."""

from __future__ import annotations

import contextlib
import string
import uuid
from pathlib import Path

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aicontract as ac
from aicontract.governance import Record, verify
from aicontract.governance.enforce import Governance
from aicontract.negotiate import Negotiator
from fakes import FakeBackend

# A prefix no hash, number or name in the record can contain by chance ("000000000000" can).
_secret = st.text(
    alphabet=string.ascii_letters + string.digits + "+/=_-", min_size=12, max_size=40
).map(lambda s: f"sk~{s}")


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(secret=_secret, label=_secret)
def test_no_secret_in_the_record(tmp_path: Path, secret: str, label: str) -> None:
    path = tmp_path / f"record-{uuid.uuid4().hex}.jsonl"
    contract = ac.Contract(
        name="job",
        gpus=1,
        workload=ac.Workload(env={"API_TOKEN": secret}, command=["run", "--key", secret]),
        labels={"token": label},
    )

    async def run() -> None:
        fake = FakeBackend()
        negotiator = Negotiator(
            [fake], clock=fake.clock, governance=Governance(record=Record(path), clock=fake.clock)
        )
        lease = await negotiator.acquire(contract)
        await lease.release()
        fake.available = False
        with contextlib.suppress(ac.NoOffer):
            await negotiator.acquire(contract)

    anyio.run(run)
    text = path.read_text()
    assert secret not in text
    assert label not in text
    kinds = [e["kind"] for e in Record(path).entries()]
    assert kinds == ["grant", "end", "no-offer"]
    assert verify(path).ok
