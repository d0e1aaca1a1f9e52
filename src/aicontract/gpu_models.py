"""Matching the GPU model a contract names against what hardware reports.

Contracts say ``H100`` or ``A100-80GB``; NVML says ``NVIDIA H100 80GB HBM3``
and Kubernetes' GPU feature discovery ``NVIDIA-A100-SXM4-80GB``. A contract's
model matches a product when every token of the model appears among the
product's tokens, so ``A100-80GB`` matches ``NVIDIA A100-SXM4-80GB`` but not
``NVIDIA A100-SXM4-40GB``, and ``H100`` does not match ``H100X`` or ``GH100``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["capability", "compute_capability_of", "matches", "pick_model"]

_SPLIT = re.compile(r"[\s_\-/]+")


def _tokens(name: str) -> set[str]:
    return {t for t in _SPLIT.split(name.upper()) if t and t != "NVIDIA"}


def matches(wanted: str, product: str) -> bool:
    """True when the contract's model name ``wanted`` describes ``product``."""
    want = _tokens(wanted)
    return bool(want) and want <= _tokens(product)


def pick_model(models: Sequence[str], product: str) -> str | None:
    """The first of the contract's acceptable ``models`` that ``product`` is (``None``: none).

    An empty ``models`` accepts anything and answers with the product name.
    """
    if not models:
        return product
    for model in models:
        if matches(model, product):
            return model
    return None


# NVIDIA's published compute capabilities, for providers whose catalogs name the GPU but
# not its capability (the cloud APIs). Checked in order: the first family that matches.
_CAPABILITIES: tuple[tuple[str, str], ...] = (
    ("GB200", "10.0"),
    ("B200", "10.0"),
    ("GH200", "9.0"),
    ("H200", "9.0"),
    ("H100", "9.0"),
    ("L40S", "8.9"),
    ("L40", "8.9"),
    ("L4", "8.9"),
    ("RTX 6000 ADA", "8.9"),
    ("A100", "8.0"),
    ("A10G", "8.6"),
    ("A10", "8.6"),
    ("A6000", "8.6"),
    ("A40", "8.6"),
    ("T4", "7.5"),
    ("V100", "7.0"),
)


def compute_capability_of(product: str) -> str | None:
    """The compute capability of a GPU named ``product`` (``None`` when unknown)."""
    for family, capability in _CAPABILITIES:
        if matches(family, product):
            return capability
    return None


def capability(text: str | None) -> tuple[int, int]:
    """A compute capability as a comparable pair: ``"9.0"`` is ``(9, 0)``.

    Anything unreadable (``None``, ``"unknown"``) is ``(-1, -1)``, below every real
    capability, so it never satisfies a requirement.
    """
    major, _, minor = (text or "").partition(".")
    try:
        return (int(major), int(minor or 0))
    except ValueError:
        return (-1, -1)
