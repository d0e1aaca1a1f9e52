"""``aicontract gc``: delete what holders stopped renewing (guarantee 4: nothing leaks).

A lease's holder renews its Lease object's ``renewTime``; a holder that crashed
or lost its network stops. ``aicontract gc`` deletes every lease whose
``renewTime + leaseDurationSeconds`` (plus ``--grace``) has passed, every lease
past its contract's end, and every labelled object whose Lease object is gone.
Run it by hand or as the CronJob in ``docs/backends/kubernetes.md``.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import click

from ..backends.registry import load_backend_class
from ..units import Duration
from .output import friendly, path_option, print_json, results

__all__ = ["COMMANDS", "gc"]


@click.command()
@path_option(
    "--kubeconfig",
    help="Kubeconfig file (default: in-cluster, then $KUBECONFIG, then ~/.kube/config).",
)
@click.option("--context", default=None, help="Kubeconfig context (default: the current one).")
@click.option(
    "--namespace",
    "-n",
    default=None,
    help="Only this namespace (default: every namespace the credentials can list).",
)
@click.option(
    "--grace",
    default="0s",
    show_default=True,
    help="Extra time past a lease's expiry before it is collected (e.g. 30s).",
)
@click.option("--dry-run", is_flag=True, help="Say what would be deleted; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (never coloured).")
@friendly
def gc(
    kubeconfig: Path | None,
    context: str | None,
    namespace: str | None,
    grace: str,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Delete Kubernetes leases whose holder stopped renewing, and their pods and services."""
    # Through the registry: a missing extra is a ConfigError that names it.
    load_backend_class("kubernetes")
    from ..backends.kubernetes import GarbageReport, KubernetesBackend

    seconds = Duration(grace).seconds

    async def run() -> GarbageReport:
        async with KubernetesBackend(kubeconfig=kubeconfig, context=context) as backend:
            return await backend.collect_garbage(
                namespace=namespace, grace=seconds, dry_run=dry_run
            )

    report = anyio.run(run)
    expired, orphans, kept = list(report.expired), list(report.orphans), report.kept
    if as_json:
        print_json({"expired": expired, "orphans": orphans, "kept": kept, "dry_run": dry_run})
        return
    out = results()
    verb = "would delete" if dry_run else "deleted"
    for name in expired:
        out.print(f"{verb} expired lease {name}", markup=False, highlight=False)
    for name in orphans:
        out.print(f"{verb} orphan {name}", markup=False, highlight=False)
    out.print(
        f"{len(expired)} expired, {len(orphans)} orphans, {kept} live leases kept",
        markup=False,
        highlight=False,
    )


COMMANDS = [gc]
