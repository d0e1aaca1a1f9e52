"""Hostile input is refused: env that fakes a grant, non-ASCII digits, huge values.

Found: a contract without ``cpus`` set ``workload.env: {AICONTRACT_CPUS: "1"}`` and
was pinned to a CPU another lease held; ``cpus: "٣"`` and ``memory`` in fullwidth digits were
read as 3 and 80GiB; an error echoed a 200,000-character value whole; a 1 MiB YAML
list took 11 s to refuse.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aicontract import Contract, ContractError, Workload
from aicontract.documents import loads
from aicontract.units import Bytes, Duration

GRANT_SET = [
    "CUDA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
    "NVIDIA_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "GPU_DEVICE_ORDINAL",
]
_NAME_TAIL = st.text(alphabet=string.ascii_letters + string.digits + "_", max_size=20)


@given(
    name=st.one_of(
        st.builds(
            lambda tail, upper: ("AICONTRACT_" if upper else "aicontract_") + tail,
            _NAME_TAIL,
            st.booleans(),
        ),
        st.sampled_from(GRANT_SET),
    ),
    value=st.text(max_size=20).filter(lambda v: "\x00" not in v),
)
def test_workload_env_cannot_set_what_the_grant_sets(name: str, value: str) -> None:
    with pytest.raises(ContractError) as caught:
        Workload(env={name: value})
    assert caught.value.path.endswith(f"env.{name}")
    assert "set by the grant" in str(caught.value)


@given(
    name=st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,20}\Z").filter(
        lambda n: not n.upper().startswith("AICONTRACT_") and n.upper() not in GRANT_SET
    )
)
def test_other_env_names_pass(name: str) -> None:
    assert Workload(env={name: "x"}).env == {name: "x"}


def test_the_reported_attack_is_refused_at_load() -> None:
    with pytest.raises(ContractError, match=r"workload\.env\.AICONTRACT_CPUS"):
        loads("name: sneaky\nworkload:\n  env: {AICONTRACT_CPUS: '1'}\n")


# Decimal digits other than 0-9: Arabic-Indic, fullwidth, Devanagari, and so on.
_FOREIGN_DIGITS = st.characters(whitelist_categories=["Nd"]).filter(lambda c: c not in "0123456789")


@given(digit=_FOREIGN_DIGITS, unit=st.sampled_from(["GiB", "MB", ""]))
def test_byte_quantities_take_ascii_digits_only(digit: str, unit: str) -> None:
    with pytest.raises(ContractError):
        Bytes(f"8{digit}{unit}")


@given(digit=_FOREIGN_DIGITS, unit=st.sampled_from(["s", "h", "m"]))
def test_durations_take_ascii_digits_only(digit: str, unit: str) -> None:
    with pytest.raises(ContractError):
        Duration(f"{digit}{unit}")


@given(digit=_FOREIGN_DIGITS)
def test_counts_take_ascii_digits_only(digit: str) -> None:
    with pytest.raises(ContractError):
        Contract(cpus=digit)
    with pytest.raises(ContractError):
        loads(f"name: c\nresources:\n  memory: '{digit}0GiB'\n")


@settings(max_examples=25)
@given(
    field=st.sampled_from(
        [
            "resources: {{memory: '{v}'}}",
            "resources: {{cpus: '{v}'}}",
            "name: '{v}'",
            "terms: {{duration: '{v}'}}",
        ]
    ),
    size=st.integers(min_value=200, max_value=200_000),
)
def test_errors_quote_at_most_80_characters_of_a_value(field: str, size: int) -> None:
    value = "x" * size
    with pytest.raises(ContractError) as caught:
        loads(field.format(v=value))
    text = str(caught.value)
    assert "x" * 81 not in text
    assert len(text) < 400
