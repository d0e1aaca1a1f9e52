"""Backends are found by name through the ``aicontract.backends`` entry-point group."""

from __future__ import annotations

import pytest

from aicontract import BackendNotFound, ConfigError, available_backends, create_backend
from aicontract.backends import registry
from aicontract.backends.local import LocalBackend


def test_local_is_registered_as_an_entry_point() -> None:
    assert "local" in available_backends()
    assert registry.load_backend_class("local") is LocalBackend


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


def test_entry_point_that_is_not_a_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import EntryPoint

    bogus = EntryPoint(name="bogus", value="builtins:dict", group=registry.GROUP)
    missing = EntryPoint(name="missing", value="no_such_module_xyz:Thing", group=registry.GROUP)
    monkeypatch.setattr(registry, "_entry_points", lambda: {"bogus": bogus, "missing": missing})
    with pytest.raises(ConfigError, match="does not name a Backend subclass"):
        create_backend("bogus")
    with pytest.raises(ConfigError, match=r"pip install 'aicontract\[missing\]'"):
        create_backend("missing")


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
