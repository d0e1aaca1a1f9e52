"""A kept table: how the GPUs of a cloud instance type are linked to each other.

Providers' APIs do not say (EC2's ``DescribeInstanceTypes`` gives the GPU model
and count, Lambda's ``/instance-types`` a description), so offers state it from
this table, checked against the providers' published specifications:

- AWS: the P4d/P4de (A100), P5/P5e/P5en (H100/H200) and P6-B200 families put
  their 8 GPUs on an HGX board whose NVSwitches link every pair by NVLink
  (``nvlink``). Every other multi-GPU type (G4dn, G5, G6, G6e, ...; and P3,
  whose NVLink hybrid cube-mesh does not link every pair) is stated as
  ``pcie``: its GPUs share a host, so PCIe at least.
- Lambda: SXM4, SXM5 and SXM6 types (``gpu_8x_h100_sxm5``, ``gpu_8x_a100_80gb_sxm4``)
  are HGX boards with NVSwitch (``nvlink``); PCIe types and the rest are ``pcie``.

A single-GPU type states nothing (there is no pair to link); so does a grant
of several instances, whose GPUs meet over the network, not NVLink.
"""

from __future__ import annotations

import re

__all__ = ["AWS_NVLINK_FAMILIES", "aws_interconnect", "lambda_interconnect"]

AWS_NVLINK_FAMILIES = frozenset({"p4d", "p4de", "p5", "p5e", "p5en", "p6-b200"})
"""EC2 families whose GPUs are all NVLink-linked through NVSwitch."""

_SXM = re.compile(r"sxm[4-9]", re.IGNORECASE)


def aws_interconnect(instance_type: str, gpus: int) -> str | None:
    """The link between an EC2 instance type's GPUs: ``nvlink``, ``pcie``, or ``None``."""
    if gpus < 2:
        return None
    family = instance_type.split(".", 1)[0].lower()
    return "nvlink" if family in AWS_NVLINK_FAMILIES else "pcie"


def lambda_interconnect(instance_type: str, gpus: int, description: str = "") -> str | None:
    """The link between a Lambda instance type's GPUs, from its name and GPU description."""
    if gpus < 2:
        return None
    return "nvlink" if _SXM.search(instance_type) or _SXM.search(description) else "pcie"
