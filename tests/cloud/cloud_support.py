"""Constants and catalog builders the cloud tests share (a plain module, not a conftest)."""

from __future__ import annotations

from typing import Any

API_KEY = "secret_lambda_key_0123456789abcdef"
AWS_KEY_ID = "AKIAFAKEKEYID0123456"
AWS_SECRET = "fakeSecretAccessKey/0123456789abcdefghijk"

FAST_OPTIONS: dict[str, Any] = {
    "requests_per_second": 0,
    "launch_interval": 0,
    "poll_interval": 0.001,
    "poll_max": 0.01,
    "retry_wait": 0.001,
    "retry_wait_max": 0.01,
    "environ": {},
}
"""Backend options that keep a cloud test fast: no rate limits, millisecond waits, no env."""


def instance_type(
    name: str,
    gpu: str,
    gpus: int,
    cents: int,
    vcpus: int = 30,
    memory_gib: int = 200,
    storage_gib: int = 512,
) -> dict[str, Any]:
    """One ``instance_type`` object in Lambda's documented shape."""
    return {
        "name": name,
        "description": f"{gpus}x {gpu}",
        "gpu_description": gpu,
        "price_cents_per_hour": cents,
        "specs": {
            "vcpus": vcpus,
            "memory_gib": memory_gib,
            "storage_gib": storage_gib,
            "gpus": gpus,
        },
    }
