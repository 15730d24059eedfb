"""segssl.registry: strict names, ``module:Class`` specs, and import errors that are not swallowed."""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Callable, Iterator

import pytest

from segssl.errors import RegistryError, SegsslError
from segssl.registry import Registry

WriteModule = Callable[[str, str], str]


@pytest.fixture
def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WriteModule]:
    """Write ``<name>.py`` into a folder on sys.path; imported modules are dropped afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


def make() -> Registry[type]:
    reg: Registry[type] = Registry("widget")

    @reg.register("beta")
    class Beta:
        pass

    @reg.register("alpha")
    class Alpha:
        pass

    return reg


def test_register_get_contains_and_sorted_names() -> None:
    reg = make()
    assert reg.get("alpha").__name__ == "Alpha"
    assert reg.get("beta").__name__ == "Beta"
    assert "alpha" in reg and "gamma" not in reg
    assert reg.names() == ["alpha", "beta"] and list(reg) == ["alpha", "beta"]


def test_register_returns_the_object_unchanged() -> None:
    reg: Registry[type] = Registry("widget")

    class Thing:
        pass

    assert reg.register("thing")(Thing) is Thing


def test_duplicate_name_raises() -> None:
    reg = make()
    with pytest.raises(RegistryError, match="widget 'alpha' is already registered"):
        reg.register("alpha")(type("Other", (), {}))
    assert reg.get("alpha").__name__ == "Alpha"  # the first registration is kept


def test_unknown_name_lists_registered_names() -> None:
    with pytest.raises(RegistryError) as info:
        make().get("gamma")
    message = str(info.value)
    assert "unknown widget 'gamma'" in message
    assert "registered: alpha, beta" in message
    assert not message.startswith("'")  # not KeyError-quoted
    assert isinstance(info.value, KeyError) and isinstance(info.value, SegsslError)


def test_unknown_name_in_empty_registry() -> None:
    with pytest.raises(RegistryError, match=r"registered: \(none\)"):
        Registry("widget").get("x")


def test_module_colon_class_resolves(write_module: WriteModule) -> None:
    write_module("segssl_test_plugin_ok", """
        class MyAdapter:
            answer = 42
    """)
    cls = make().get("segssl_test_plugin_ok:MyAdapter")
    assert cls.__name__ == "MyAdapter" and cls.answer == 42
    assert "segssl_test_plugin_ok:MyAdapter" not in make()  # resolving does not register


def test_dotted_module_inside_an_installed_package_resolves() -> None:
    assert make().get("segssl.registry:Registry") is Registry


@pytest.mark.parametrize("spec", ["segssl_no_such_module_xyz:Thing", "segssl_no_such_pkg_xyz.sub:Thing",
                                  "segssl.no_such_module_xyz:Thing"])
def test_missing_module_names_it(spec: str) -> None:
    module = spec.partition(":")[0]
    with pytest.raises(RegistryError) as info:
        make().get(spec)
    assert f"module '{module}' not found" in str(info.value)


def test_missing_attribute_names_module_and_attribute(write_module: WriteModule) -> None:
    write_module("segssl_test_plugin_attr", "class Present:\n    pass\n")
    with pytest.raises(RegistryError) as info:
        make().get("segssl_test_plugin_attr:Absent")
    assert "module 'segssl_test_plugin_attr' has no 'Absent'" in str(info.value)


def test_missing_dependency_inside_user_module_propagates(write_module: WriteModule) -> None:
    write_module("segssl_test_plugin_dep", "import segssl_definitely_missing_dependency\n")
    with pytest.raises(ModuleNotFoundError) as info:
        make().get("segssl_test_plugin_dep:Thing")
    assert not isinstance(info.value, RegistryError)
    assert info.value.name == "segssl_definitely_missing_dependency"


def test_import_error_inside_user_module_propagates(write_module: WriteModule) -> None:
    write_module("segssl_test_plugin_imp", "from os import segssl_no_such_name\n")
    with pytest.raises(ImportError, match="segssl_no_such_name") as info:
        make().get("segssl_test_plugin_imp:Thing")
    assert not isinstance(info.value, RegistryError)


def test_other_errors_inside_user_module_propagate(write_module: WriteModule) -> None:
    write_module("segssl_test_plugin_boom", "raise ValueError('boom at import')\n")
    with pytest.raises(ValueError, match="boom at import"):
        make().get("segssl_test_plugin_boom:Thing")


def test_missing_dependency_with_prefix_name_propagates(write_module: WriteModule) -> None:
    write_module("segsslplug_v2", "import segsslplug\n")
    with pytest.raises(ModuleNotFoundError) as info:
        make().get("segsslplug_v2:Thing")
    assert info.value.name == "segsslplug"


def test_builtin_registries() -> None:
    from segssl.data.adapters import ADAPTERS
    from segssl.methods import METHODS

    assert "supervised" in METHODS
    assert "folder" in ADAPTERS and "demo" in ADAPTERS
    assert ADAPTERS.get("demo").__name__ == "DemoAdapter"
    with pytest.raises(RegistryError) as info:
        ADAPTERS.get("no_such_adapter")
    assert "demo" in str(info.value) and "folder" in str(info.value)
