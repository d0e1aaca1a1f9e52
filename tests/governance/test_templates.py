"""Templates: parameters typed and ranged, locked fields that cannot be overridden."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aicontract as ac
from aicontract.cli import main
from aicontract.governance.templates import catalog, find_template, loads_template, render

TRAIN = {
    "name": "train-eu",
    "version": "1.3",
    "description": "a newer train-eu",
    "parameters": {
        "gpus": {"type": "int", "default": 8, "min": 1, "max": 8},
        "duration": {"type": "duration", "default": "4h", "max": "24h"},
        "tier": {"type": "choice", "choices": ["gold", "silver"], "default": "gold"},
    },
    "locked": ["placement.jurisdictions", "terms.min_guarantee", "resources.gpus.models"],
    "contract": {
        "name": "train-${tier}",
        "gpus": {"count": "${gpus}", "models": ["H100"]},
        "duration": "${duration}",
        "jurisdictions": ["EU"],
        "min_guarantee": "allocated",
    },
}


@pytest.fixture
def catalog_dir(private_state: Path) -> Path:
    directory = private_state.parent / "templates"
    directory.mkdir()
    (directory / "train.yaml").write_text(yaml.safe_dump(TRAIN))
    return directory


def test_shipped_templates_render_to_valid_contracts() -> None:
    found = catalog()
    assert {"notebook", "train-eu", "inference"} <= set(found)
    for versions in found.values():
        for template in versions:
            contract = render(template, {})
            assert contract.labels["aicontract.io/template"] == template.name


def test_newest_version_wins_and_exact_versions_resolve(catalog_dir: Path) -> None:
    assert find_template("train-eu").version == "1.3"
    assert find_template("train-eu@1.2").version == "1.2"
    assert find_template("train-eu@1").version == "1.3"
    with pytest.raises(ac.ContractError, match=re.escape("has no version '2.0'")):
        find_template("train-eu@2.0")
    with pytest.raises(ac.ContractError, match="no template named 'nope'"):
        find_template("nope")


def test_from_template_fills_parameters_and_overrides(catalog_dir: Path) -> None:
    contract = ac.Contract.from_template("train-eu@1.3", gpus=4, tier="silver", tenant="team-a")
    assert contract.name == "train-silver"
    assert contract.resources.gpus is not None
    assert contract.resources.gpus.count.min == 4
    assert contract.tenant == "team-a"
    assert contract.labels["aicontract.io/template-version"] == "1.3"


@pytest.mark.parametrize(
    ("params", "path", "words"),
    [
        ({"gpus": 9}, "$.params.gpus", "outside 1..8"),
        ({"gpus": "four"}, "$.params.gpus", "not a whole number"),
        ({"duration": "48h"}, "$.params.duration", "outside"),
        ({"tier": "bronze"}, "$.params.tier", "gold | silver"),
        ({"gpu": 2}, "$.params.gpu", "has no parameter 'gpu'"),
    ],
)
def test_bad_parameters_name_themselves(
    catalog_dir: Path, params: dict[str, Any], path: str, words: str
) -> None:
    with pytest.raises(ac.ContractError) as info:
        render(find_template("train-eu@1.3"), params)
    assert info.value.path == path
    assert words in str(info.value)


_LOCKED_OVERRIDES = {
    "jurisdictions": st.lists(st.sampled_from(["US", "DE", "CH", "EU"]), min_size=1, max_size=2),
    "placement": st.just({"jurisdictions": ["US"]}),
    "min_guarantee": st.sampled_from(["best-effort", "quota", "reserved", "allocated"]),
    "terms": st.just({"min_guarantee": "quota"}),
    "resources": st.just({"gpus": {"models": ["A100"]}}),
}


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    gpus=st.integers(1, 8),
    tier=st.sampled_from(["gold", "silver"]),
    key=st.sampled_from(sorted(_LOCKED_OVERRIDES)),
    data=st.data(),
)
def test_locked_fields_cannot_be_overridden(
    catalog_dir: Path, gpus: int, tier: str, key: str, data: st.DataObject
) -> None:
    value = data.draw(_LOCKED_OVERRIDES[key])
    with pytest.raises(ac.ContractError) as info:
        ac.Contract.from_template("train-eu@1.3", gpus=gpus, tier=tier, **{key: value})
    assert "is locked by template train-eu@1.3" in str(info.value)


def test_unlocked_fields_can_be_overridden(catalog_dir: Path) -> None:
    contract = ac.Contract.from_template("train-eu@1.3", regions=["eu-west-1"], max_price="9 USD/h")
    assert contract.placement.regions == ("eu-west-1",)
    assert contract.placement.jurisdictions == ("EU",)


def test_a_gpu_count_override_changes_the_count_only(catalog_dir: Path) -> None:
    """``resources: {gpus: 2}`` is ``gpus: {count: 2}``: it keeps the template's models
    (locked or not) instead of replacing the whole GPU requirement."""
    for override in ({"resources": {"gpus": 2}}, {"gpus": 2}):
        contract = ac.Contract.from_template("train-eu@1.3", **override)
        assert contract.resources.gpus is not None
        assert str(contract.resources.gpus.count) == "2"
        assert contract.resources.gpus.models == ("H100",)
    with pytest.raises(ac.ContractError, match="is locked by template"):
        ac.Contract.from_template("train-eu@1.3", resources={"gpus": {"models": ["A100"]}})


def test_contract_files_may_name_a_template(catalog_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("template: train-eu@1.3\nparams: {gpus: 2}\ntenant: team-a\n")
    contract = ac.load(path)
    assert contract.resources.gpus is not None
    assert contract.resources.gpus.count.min == 2
    path.write_text("template: train-eu@1.3\njurisdictions: [US]\n")
    with pytest.raises(ac.ContractError, match="locked"):
        ac.load(path)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"version": "one"}, "not a version"),
        ({"name": "Train EU"}, "not a template name"),
        ({"contract": {"gpus": "${gpuz}"}}, "names no declared parameter"),
        ({"parameters": {"gpus": {"type": "int", "default": "x"}}}, "not a whole number"),
        ({"parameters": {"t": {"type": "text", "min": 1}}}, "has no range"),
        ({"contract": {"gpus": 0}}, "do not make a valid contract"),
    ],
)
def test_bad_templates_are_refused_clearly(change: dict[str, Any], words: str) -> None:
    with pytest.raises(ac.ContractError, match=re.escape(words)):
        loads_template(json.dumps({**TRAIN, **change}), "json")


_junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "name",
                    "version",
                    "parameters",
                    "locked",
                    "contract",
                    "type",
                    "default",
                    "min",
                    "max",
                    "choices",
                    "gpus",
                    "count",
                    "duration",
                    "x",
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=16,
)


@settings(max_examples=300, deadline=None)
@given(doc=_junk)
def test_fuzzed_templates_give_only_clear_errors(doc: Any) -> None:
    with contextlib.suppress(ac.ContractError):
        loads_template(json.dumps(doc), "json")


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    params=st.dictionaries(st.sampled_from(["gpus", "duration", "tier", "x"]), _junk, max_size=3)
)
def test_fuzzed_parameters_give_only_clear_errors(
    catalog_dir: Path, params: dict[str, Any]
) -> None:
    with contextlib.suppress(ac.ContractError):
        render(find_template("train-eu@1.3"), params)


def test_cli_template_commands(catalog_dir: Path) -> None:
    runner = CliRunner()
    listed = runner.invoke(main, ["template", "list"])
    assert listed.exit_code == 0
    assert "train-eu@1.3" in listed.output
    assert "also 1.2" in listed.output
    shown = runner.invoke(main, ["template", "show", "train-eu@1.3"])
    assert "gpus: int in 1..8 (default 8)" in shown.output
    assert "locked: placement" in shown.output
    rendered = runner.invoke(
        main, ["template", "render", "train-eu", "-p", "gpus=2", "--format", "json"]
    )
    assert rendered.exit_code == 0, rendered.output
    assert json.loads(rendered.output)["resources"]["gpus"]["count"] == 2
    bad = runner.invoke(main, ["template", "render", "train-eu", "-p", "gpus=20"])
    assert bad.exit_code == 1
    assert "$.params.gpus: 20 is outside 1..8" in bad.output
