"""Hostile: a template's locked fields, and the catalog and policy they are judged by.

A platform team locks a template's GPU count so that a tenant allowed only that
template never holds more. These tests try to get more anyway, or to keep
using a template after the platform team tightened it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import aicontract as ac
from aicontract.governance import Identity, loads_policy
from aicontract.governance import policy as policy_module
from aicontract.governance.enforce import contract_digest

# GPUs too small for the notebook template's own requirement (>= 16GiB): only a
# fallback can be granted here.
SMALL_GPUS = """\
cpus: 8
memory: 64GiB
gpus:
  - {model: L4, memory: 8GiB}
  - {model: L4, memory: 8GiB}
  - {model: L4, memory: 8GiB}
"""
ONLY_NOTEBOOK = "default: {free_form: false, templates: [notebook]}\n"


def _policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    monkeypatch.setenv("AICONTRACT_POLICY", str(path))


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(
            lambda d: ac.load(_file(d, "template: notebook\nalternatives: [{gpus: 3}]\n")),
            id="file-alternatives-count",
        ),
        pytest.param(
            lambda d: ac.load(
                _file(d, "template: notebook\nalternatives: [{gpus: {count: 3, models: [L4]}}]\n")
            ),
            id="file-alternatives-gpu",
        ),
        pytest.param(
            lambda d: ac.Contract.from_template("notebook", alternatives=[ac.Resources(gpus=3)]),
            id="api-from_template",
        ),
    ],
)
def test_alternatives_cannot_escape_a_templates_locked_gpu_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make: object
) -> None:
    """notebook locks resources.gpus.count (1): a tenant allowed only notebook must never
    hold 3 GPUs under its name, whether the fallback is refused at load or at commit."""
    inventory = tmp_path / "small.yaml"
    inventory.write_text(SMALL_GPUS)
    monkeypatch.setenv("AICONTRACT_INVENTORY", str(inventory))
    _policy(tmp_path, monkeypatch, ONLY_NOTEBOOK)
    try:
        granted = _granted_gpus(make(tmp_path))  # type: ignore[operator]
    except (ac.ContractError, ac.PolicyViolation, ac.NoOffer):
        return  # refused: at load or at commit, either holds the lock
    pytest.fail(f"a notebook-template lease was granted {granted} GPUs (locked: 1)")


def _granted_gpus(contract: ac.Contract) -> int:
    """Acquire ``contract``, release it, and say how many GPUs it was granted."""
    lease = ac.acquire_sync(contract)
    granted = lease.grant.gpus
    ac.release_sync(lease)
    return granted


def _file(directory: Path, text: str) -> Path:
    path = directory / "contract.yaml"
    path.write_text(text)
    return path


TEMPLATE = """\
name: pair
version: "1.0"
parameters: {}
locked: [resources.gpus.count]
contract:
  name: pair
  gpus: {count: %d}
"""


def test_a_template_tightened_in_the_catalog_binds_the_next_acquire_in_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The platform team lowers template pair's locked count from 2 to 1 (same version,
    edited in place, as a policy file is). A tightened policy binds the next acquire in a
    running process; a tightened template must too: a 2-GPU contract made from the old
    template is refused (templates.locked), not granted from a catalog read hours ago."""
    catalog = tmp_path / "templates" / "pair.yaml"
    catalog.write_text(TEMPLATE % 2)
    _policy(tmp_path, monkeypatch, "default: {free_form: false, templates: [pair]}\n")
    contract = ac.Contract.from_template("pair")
    ac.release_sync(ac.acquire_sync(contract))  # allowed as the template stands
    catalog.write_text(TEMPLATE % 1)
    forged = ac.Contract.from_template("pair").with_(gpus=2)
    with pytest.raises(ac.PolicyViolation, match=r"templates\.locked"):
        _granted_gpus(forged)


def test_a_template_retired_from_the_catalog_is_refused_in_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A template removed from the catalog is refused at the next acquire ("cannot be found")."""
    catalog = tmp_path / "templates" / "pair.yaml"
    catalog.write_text(TEMPLATE % 1)
    _policy(tmp_path, monkeypatch, "default: {free_form: false, templates: [pair]}\n")
    contract = ac.Contract.from_template("pair")
    ac.release_sync(ac.acquire_sync(contract))
    catalog.unlink()
    with pytest.raises(ac.PolicyViolation, match="cannot be found"):
        _granted_gpus(contract)


def test_a_policy_file_replaced_in_the_same_second_with_the_same_size_binds_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Atomic rename of a policy of the same size and mtime (a cache keyed on size and
    mtime would miss it): the next acquire is judged by the new one."""
    import os

    loose = "default: {quotas: {gpus: 4}}\n"
    tight = "default: {quotas: {gpus: 0}}\n"
    assert len(loose) == len(tight)
    path = tmp_path / "policy.yaml"
    path.write_text(loose)
    monkeypatch.setenv("AICONTRACT_POLICY", str(path))
    stamp = path.stat().st_mtime_ns
    ac.release_sync(ac.acquire_sync(ac.Contract(name="x", gpus=1)))
    new = tmp_path / "policy.new"
    new.write_text(tight)
    os.utime(new, ns=(stamp, stamp))
    os.replace(new, path)
    with pytest.raises(ac.PolicyViolation, match=r"quotas\.gpus"):
        _granted_gpus(ac.Contract(name="x", gpus=1))


def test_a_policy_object_changed_in_place_is_judged_afresh() -> None:
    """Policy is a frozen Struct but its ``tenants`` is a plain dict: a service that
    tightens a tenant in place (policy.tenants[t] = Rules(...)) must see the next check
    refuse; the verdict cache keyed on the policy's identity answers from before."""
    policy = loads_policy("default: {}\n")
    contract = ac.Contract(name="x", tenant="team-a", gpus=1)
    who = Identity(kind="user", name="alice")
    assert policy_module.check_contract(policy, who, contract)[0] == []
    policy.tenants["team-a"] = policy_module.Rules(free_form=False)
    refusals = policy_module.check_contract(policy, who, contract)[0]
    assert [r.rule for r in refusals] == ["tenants.team-a.free_form"]


def test_a_contracts_labels_changed_in_place_are_judged_and_recorded_afresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, private_state: Path
) -> None:
    """Contract is frozen but ``labels`` is a dict. A caller who drops the template label
    in place and acquires again makes a free-form contract: refused where only templates
    may be used; and the record must name the digest of the contract as it was judged."""
    _policy(tmp_path, monkeypatch, ONLY_NOTEBOOK)
    contract = ac.Contract.from_template("notebook")
    ac.release_sync(ac.acquire_sync(contract))
    del contract.labels["aicontract.io/template"]
    del contract.labels["aicontract.io/template-version"]
    digest = contract_digest(contract)
    with pytest.raises(ac.PolicyViolation, match="free_form"):
        _granted_gpus(contract)
    entries = list(ac.governance.Record(private_state / "record.jsonl").entries())
    assert entries[-1]["digest"] == digest, "the record names the contract as it was before"


SIZED = """\
name: sized
version: "1.0"
parameters:
  n: {type: int, default: 1, min: 1, max: 2, description: GPUs}
locked: [resources.gpus.count]
contract:
  name: sized
  resources:
    gpus: %s
"""


@pytest.mark.parametrize("form", ['"${n}"', '{count: "${n}"}'], ids=["shorthand", "mapping"])
def test_a_locked_field_a_parameter_fills_stays_within_the_parameters_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    """Template sized lets n be 1..2 and locks the count n fills. A contract that names
    sized but asks for 4 GPUs (edited after rendering, or written by hand with the
    template's labels) is outside the template: refused, not granted 4."""
    (tmp_path / "templates" / "sized.yaml").write_text(SIZED % form)
    _policy(tmp_path, monkeypatch, "default: {free_form: false, templates: [sized]}\n")
    rendered = ac.Contract.from_template("sized", n=2)
    assert _granted_gpus(rendered) == 2  # the template's own range is allowed
    for forged in (
        rendered.with_(gpus=4),
        ac.Contract(name="sized", gpus=4, labels=dict(rendered.labels)),
    ):
        with pytest.raises(ac.PolicyViolation, match=r"templates\.locked"):
            _granted_gpus(forged)
