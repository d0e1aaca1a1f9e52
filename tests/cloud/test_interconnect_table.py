"""Cloud offers state how an instance type's GPUs are linked, from the kept table."""

from __future__ import annotations

import pytest
from cloud_support import API_KEY, instance_type
from fake_lambda import FakeLambda

from aicontract import GPU, Contract
from aicontract.backends.cloud import LambdaBackend
from aicontract.backends.cloud.interconnect import aws_interconnect, lambda_interconnect


@pytest.mark.parametrize(
    ("itype", "gpus", "link"),
    [
        ("p4d.24xlarge", 8, "nvlink"),
        ("p4de.24xlarge", 8, "nvlink"),
        ("p5.48xlarge", 8, "nvlink"),
        ("p5en.48xlarge", 8, "nvlink"),
        ("p6-b200.48xlarge", 8, "nvlink"),
        ("g5.12xlarge", 4, "pcie"),
        ("g5.48xlarge", 8, "pcie"),
        ("g6e.12xlarge", 4, "pcie"),
        # P3's NVLink cube-mesh does not link every pair: only PCIe holds for all.
        ("p3.16xlarge", 8, "pcie"),
        ("g5.xlarge", 1, None),
        ("p5.4xlarge", 1, None),
    ],
)
def test_aws_table(itype: str, gpus: int, link: str | None) -> None:
    assert aws_interconnect(itype, gpus) == link


@pytest.mark.parametrize(
    ("name", "description", "gpus", "link"),
    [
        ("gpu_8x_h100_sxm5", "H100 (80 GB SXM5)", 8, "nvlink"),
        ("gpu_8x_a100_80gb_sxm4", "A100 (80 GB SXM4)", 8, "nvlink"),
        ("gpu_8x_b200_sxm6", "B200 (180 GB SXM6)", 8, "nvlink"),
        ("gpu_4x_a6000", "RTX A6000 (48 GB)", 4, "pcie"),
        ("gpu_2x_h100_pcie", "H100 (80 GB PCIe)", 2, "pcie"),
        ("gpu_1x_h100_pcie", "H100 (80 GB PCIe)", 1, None),
        ("gpu_1x_gh200", "GH200 (96 GB)", 1, None),
    ],
)
def test_lambda_table(name: str, description: str, gpus: int, link: str | None) -> None:
    assert lambda_interconnect(name, gpus, description) == link


def _backend(fake: FakeLambda) -> LambdaBackend:
    return LambdaBackend(
        api_key=API_KEY,
        ssh_key_name="laptop",
        base_url=fake.base,
        requests_per_second=0,
        environ={},
    )


@pytest.mark.anyio
async def test_lambda_offers_nvlink_only_where_the_table_says_so(fake: FakeLambda) -> None:
    fake.add_type(instance_type("gpu_8x_h100_sxm5", "H100 (80 GB SXM5)", 8, 2392), ["us-east-1"])
    fake.add_type(instance_type("gpu_8x_a6000", "RTX A6000 (48 GB)", 8, 640), ["us-east-1"])
    backend = _backend(fake)
    nvlink = await backend.quote(Contract(gpus=GPU(count=8, interconnect="nvlink")))
    assert [(o.details["instance_type"], o.grant.gpu_interconnect) for o in nvlink.offers] == [
        ("gpu_8x_h100_sxm5", "nvlink")
    ]
    only_pcie = await backend.quote(
        Contract(gpus=GPU(count=8, models=["A6000"], interconnect="nvlink"))
    )
    assert not only_pcie.offers
    assert "resources.gpus.interconnect" in {r.requirement for r in only_pcie.rejections}
    pcie = await backend.quote(Contract(gpus=GPU(count=8, interconnect="pcie")))
    # NVLink meets "at least PCIe" too.
    assert sorted(o.grant.gpu_interconnect or "" for o in pcie.offers) == ["nvlink", "pcie"]


@pytest.mark.anyio
async def test_cloud_offers_never_meet_numa_locality(fake: FakeLambda) -> None:
    """A whole VM states no NUMA placement, so placement.locality: numa is refused."""
    fake.add_type(instance_type("gpu_8x_h100_sxm5", "H100 (80 GB SXM5)", 8, 2392), ["us-east-1"])
    contract = Contract(gpus=GPU(count=8), placement={"locality": "numa"})
    quote = await _backend(fake).quote(contract)
    assert not quote.offers
    assert [r.requirement for r in quote.rejections] == ["placement.locality"]
