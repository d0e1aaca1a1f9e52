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

__all__ = ["matches", "pick_model"]

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
