"""An agent that leases inference capacity under a p99 objective and calls it with openai.

    python examples/agent/agent.py            # pip install openai

It acquires a lease running an OpenAI-compatible server (server.py, beside this
file) on a port granted as ``auto``, under ``latency_p99 <= 100ms`` with
``on_violation: renegotiate``. It calls the server with the ``openai`` client
through ``lease.current.endpoints`` and reports each call's latency to the
lease (``lease.measure``). The server degrades after ``--slow-after`` requests,
the objective breaks, and the lease is renegotiated make-before-break: a new
server starts on a port of its own, is probed on ``/healthz``, then
``lease.current`` switches and the old one is drained and stopped. The agent
keeps calling throughout; it exits 0 when no request failed and it saw
``--renegotiations`` switches, leaving no lease and no server behind.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anyio
import openai

import aicontract
from aicontract import Contract, Lease, Objective, Probe, Workload

SERVER = Path(__file__).resolve().with_name("server.py")


def chat_contract(slow_after: int, tag: str) -> Contract:
    """Inference capacity: one CPU, our server on an auto port, a p99 objective."""
    command = [sys.executable, str(SERVER), "--slow-after", str(slow_after)]
    return Contract(
        name="chat-agent",
        cpus=1,
        objectives=[Objective(sli="latency_p99", op="<=", target="100ms", window="1m")],
        on_violation="renegotiate",
        start_by="30s",
        workload=Workload(
            kind="inference",
            command=(*command, "--tag", tag) if tag else tuple(command),
            ports={"http": "auto"},
            probe=Probe(endpoint="http", path="/healthz", interval="1h"),
        ),
    )


class Clients:
    """One openai client per endpoint (a replacement serves at its own port)."""

    def __init__(self) -> None:
        self._by_url: dict[str, openai.AsyncOpenAI] = {}

    def for_lease(self, lease: Lease) -> openai.AsyncOpenAI:
        base = lease.endpoints["http"] + "/v1"
        if base not in self._by_url:
            # No retries: a request that fails must count as failed, not be hidden.
            self._by_url[base] = openai.AsyncOpenAI(
                base_url=base, api_key="not-needed", max_retries=0, timeout=10
            )
        return self._by_url[base]

    async def aclose(self) -> None:
        for client in self._by_url.values():
            await client.close()


async def run(args: argparse.Namespace) -> int:
    switches: list[tuple[str, str]] = []
    sent = failed = 0
    errors: list[str] = []
    answered_by: set[str] = set()
    clients = Clients()

    def replaced(old: Lease, new: Lease) -> None:
        switches.append((old.id, new.id))
        print(f"renegotiated: {old.id} -> {new.id}, now {new.endpoints['http']}", flush=True)

    try:
        async with await aicontract.acquire(chat_contract(args.slow_after, args.tag)) as lease:
            print(f"leased {lease.id}: {lease.endpoints['http']}", flush=True)
            lease.on_replaced(replaced)
            models = await clients.for_lease(lease.current).models.list()
            model = models.data[0].id
            after_last_switch = 0
            with anyio.fail_after(args.timeout):
                while after_last_switch < args.requests_after:
                    if len(switches) >= args.renegotiations:
                        after_last_switch += 1
                    client = clients.for_lease(lease.current)  # the lease serving now
                    sent += 1
                    try:
                        with lease.measure("latency", errors=True):
                            reply = await client.chat.completions.create(
                                model=model,
                                messages=[{"role": "user", "content": f"question {sent} is here"}],
                            )
                        answered_by.add(reply.system_fingerprint or "?")
                    except openai.OpenAIError as exc:
                        failed += 1
                        errors.append(repr(exc))
                    await anyio.sleep(0.01)
        # Leaving `async with` released the lease and every replacement, and stopped
        # every server they ran.
    finally:
        await clients.aclose()
    print(
        f"{sent} requests, {failed} failed, answered by {len(answered_by)} servers,"
        f" {len(switches)} renegotiations",
        flush=True,
    )
    for error in errors[:5]:
        print(f"  {error}", flush=True)
    return 0 if failed == 0 and len(switches) >= args.renegotiations else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow-after", type=int, default=30, help="server's fast requests")
    parser.add_argument("--renegotiations", type=int, default=1, help="switches to wait for")
    parser.add_argument("--requests-after", type=int, default=20, help="calls after the last")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up after (s)")
    parser.add_argument("--tag", default="", help="passed to the servers (tests find them)")
    sys.exit(anyio.run(run, parser.parse_args()))


if __name__ == "__main__":
    main()
