"""Backends are found by name: entry points, and registrations made at run time."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aicontract import (
    BackendNotFound,
    ConfigError,
    available_backends,
    create_backend,
    register_backend,
    unregister_backend,
)
from aicontract.backends import load_backend_class
from aicontract.backends.local import LocalBackend


def test_local_is_registered_as_an_entry_point() -> None:
    assert "local" in available_backends()
    assert load_backend_class("local") is LocalBackend


def test_create_backend_passes_options(tmp_path) -> None:  # type: ignore[no-untyped-def]
    backend = create_backend("local", state_dir=tmp_path, ttl=5)
    assert isinstance(backend, LocalBackend)
    assert (backend.state_dir, backend.ttl) == (tmp_path, 5)


def test_unknown_backend_lists_the_known_ones() -> None:
    with pytest.raises(BackendNotFound) as info:
        create_backend("nope")
    assert info.value.name == "nope"
    assert "local" in info.value.known
    assert "no backend named 'nope' (registered: " in str(info.value)
    assert isinstance(info.value, ConfigError)


def _install_plugin(root: Path, dist: str, entries: dict[str, str]) -> None:
    """A real installed distribution (dist-info with entry points) under ``root``."""
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entries.items())
    (info / "entry_points.txt").write_text(f"[aicontract.backends]\n{lines}")


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder on sys.path where tests install third-party plugins."""
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_third_party_plugin_is_found_through_its_entry_point(plugins: Path) -> None:
    (plugins / "thirdparty_ok.py").write_text(
        "from aicontract.backends.local import LocalBackend\n"
        "class Mine(LocalBackend):\n    name = 'mine'\n"
    )
    _install_plugin(plugins, "thirdparty-ok", {"mine": "thirdparty_ok:Mine"})
    assert "mine" in available_backends()
    assert create_backend("mine", state_dir=plugins / "state").name == "mine"


def test_entry_point_that_is_not_a_backend(plugins: Path) -> None:
    _install_plugin(plugins, "thirdparty-bogus", {"bogus": "builtins:dict"})
    with pytest.raises(ConfigError, match="does not name a Backend subclass"):
        create_backend("bogus")


def test_third_party_hint_names_its_own_package(plugins: Path) -> None:
    (plugins / "thirdparty_broken.py").write_text("import no_such_module_xyz\n")
    _install_plugin(plugins, "thirdparty-broken", {"broken": "thirdparty_broken:Backend"})
    with pytest.raises(ConfigError) as info:
        create_backend("broken")
    text = str(info.value)
    assert "pip install --upgrade 'thirdparty-broken'" in text
    assert "'no_such_module_xyz' is missing" in text
    assert "aicontract[broken]" not in text


def _without(monkeypatch: pytest.MonkeyPatch, blocked: str, *fresh: str) -> None:
    """Make ``import blocked`` fail, and forget ``fresh`` modules so they import again."""
    monkeypatch.setitem(sys.modules, blocked, None)
    for name in list(sys.modules):
        if any(name == f or name.startswith(f + ".") for f in fresh):
            monkeypatch.delitem(sys.modules, name)


@pytest.mark.parametrize(
    ("name", "blocked", "module", "hint"),
    [
        ("aws", "boto3", "aicontract.backends.cloud.aws", "pip install 'aicontract[aws]'"),
        # Lambda needs no extra: httpx missing means a damaged install.
        (
            "lambda",
            "httpx",
            "aicontract.backends.cloud.lambda_cloud",
            "pip install --force-reinstall aicontract",
        ),
    ],
)
# (kubernetes imports lightkube only when it connects, and names its extra there.)
def test_built_in_backends_name_the_right_extra(
    monkeypatch: pytest.MonkeyPatch, name: str, blocked: str, module: str, hint: str
) -> None:
    _without(monkeypatch, blocked, module)
    with pytest.raises(ConfigError) as info:
        create_backend(name)
    assert hint in str(info.value)
    assert f"{blocked!r} is missing" in str(info.value)
    if name == "lambda":
        assert "aicontract[lambda]" not in str(info.value)


class _Counting(LocalBackend):
    built = 0

    def __init__(self, **options: Any) -> None:
        type(self).built += 1
        super().__init__(**options)


@pytest.fixture
def registered() -> Iterator[list[str]]:
    """Names registered by a test, unregistered after it."""
    names: list[str] = []
    yield names
    for name in names:
        unregister_backend(name)


def test_register_backend_at_run_time(registered: list[str], tmp_path: Path) -> None:
    register_backend("counting", _Counting)
    registered.append("counting")
    assert "counting" in available_backends()
    backend = create_backend("counting", state_dir=tmp_path)
    assert isinstance(backend, _Counting)
    assert _Counting.built == 1
    assert load_backend_class("counting") is _Counting


def test_register_a_factory_function(registered: list[str], tmp_path: Path) -> None:
    def factory(**options: Any) -> LocalBackend:
        return LocalBackend(state_dir=tmp_path, **options)

    register_backend("configured", factory)
    registered.append("configured")
    backend = create_backend("configured", ttl=7)
    assert isinstance(backend, LocalBackend)
    assert (backend.state_dir, backend.ttl) == (tmp_path, 7)
    with pytest.raises(ConfigError, match="does not name a Backend subclass"):
        load_backend_class("configured")


def test_a_factory_must_build_a_backend(registered: list[str]) -> None:
    register_backend("wrong", lambda **_: object())  # type: ignore[arg-type,return-value]
    registered.append("wrong")
    with pytest.raises(ConfigError, match="returned object, not a Backend"):
        create_backend("wrong")


def test_registering_a_taken_name_needs_replace(registered: list[str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="already registered"):
        register_backend("local", _Counting)
    register_backend("local", _Counting, replace=True)
    registered.append("local")
    assert isinstance(create_backend("local", state_dir=tmp_path), _Counting)
    unregister_backend("local")
    assert load_backend_class("local") is LocalBackend


@pytest.mark.parametrize("bad", ["", " x", "a,b"])
def test_registered_names_must_fit_the_environment_list(bad: str) -> None:
    with pytest.raises(ConfigError, match="is not allowed"):
        register_backend(bad, _Counting)


def test_default_backends_use_run_time_registrations(
    registered: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from aicontract.negotiate import default_backends

    register_backend("here", lambda **_: LocalBackend(state_dir=tmp_path))
    registered.append("here")
    monkeypatch.setenv("AICONTRACT_BACKENDS", "here")
    assert [b.state_dir for b in default_backends()] == [tmp_path]  # type: ignore[attr-defined]


def test_default_backends_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from aicontract.negotiate import default_backends

    monkeypatch.setenv("AICONTRACT_BACKENDS", "local, ")
    assert [b.name for b in default_backends()] == ["local"]
    monkeypatch.setenv("AICONTRACT_BACKENDS", "local,nope")
    with pytest.raises(BackendNotFound):
        default_backends()


@pytest.mark.parametrize(
    ("product", "capability"),
    [
        ("NVIDIA H100 80GB HBM3", "9.0"),
        ("NVIDIA-A100-SXM4-80GB", "8.0"),
        ("NVIDIA A10G", "8.6"),
        ("NVIDIA L40S", "8.9"),
        ("Tesla V100-SXM2-16GB", "7.0"),
        ("Some Future GPU", None),
    ],
)
def test_compute_capability_of_known_gpus(product: str, capability: str | None) -> None:
    from aicontract.gpu_models import compute_capability_of

    assert compute_capability_of(product) == capability
