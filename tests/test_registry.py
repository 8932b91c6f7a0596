"""The registry contract of DESIGN.md: register, gin selectors, build, errors, listing."""

from __future__ import annotations

import inspect

import gin
import pytest

from mlr_registry import build, register, registry
from mlr_registry.config import parse
from mlr_registry.errors import ConfigError, RegistryError


@register("masker", "test_reg_stripes")
class Stripes:
    def __init__(self, width: int = 4, ratio: float = 0.5):
        self.width, self.ratio = width, ratio


@register("decoder", "test_reg_factory")
def make_thing(depth: int = 2, scale: float = 1.0):
    return ("thing", depth, scale)


@pytest.fixture(autouse=True)
def _clear_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_register_makes_gin_selector_and_build_applies_bindings():
    gin.parse_config("maskers.test_reg_stripes.width = 7")
    built = build("masker", "test_reg_stripes")
    assert (built.width, built.ratio) == (7, 0.5)
    # keyword arguments win over gin bindings
    assert build("masker", "test_reg_stripes", width=3, ratio=0.25).width == 3
    # the class itself is configurable in place: a direct call applies the binding too
    assert Stripes().width == 7


def test_gin_reference_with_kind_plural_module():
    gin.parse_config("""
        decoders.test_reg_factory.depth = 5
        maskers.test_reg_stripes.ratio = 0.75
    """)
    assert build("decoder", "test_reg_factory") == ("thing", 5, 1.0)
    assert registry.lookup("masker", "test_reg_stripes").selector == "maskers.test_reg_stripes"
    assert registry.GIN_MODULES["loss"] == "losses" and registry.GIN_MODULES["replay"] == "replays"


def test_duplicate_name_is_an_error_naming_both_origins_and_keeps_the_first():
    with pytest.raises(RegistryError) as info:
        with registry._origin("some-plugin-dist"):
            @register("masker", "test_reg_stripes")
            class Other:  # noqa: F841
                pass
    message = str(info.value)  # Stripes came from this test module, not from mlr_registry
    assert "by test_registry (test_registry)" in message and "some-plugin-dist" in message
    assert "test_reg_stripes" in message
    assert registry.lookup("masker", "test_reg_stripes").target is Stripes


def test_unknown_kind_and_name_suggest_closest():
    with pytest.raises(RegistryError, match="unknown component kind 'maskr'.*'masker'"):
        register("maskr", "x")
    with pytest.raises(RegistryError) as info:
        build("masker", "test_reg_stripe")
    assert "unknown masker 'test_reg_stripe'" in str(info.value)
    assert "closest: test_reg_stripes" in str(info.value)


def test_build_unknown_parameter_lists_real_parameters():
    with pytest.raises(ConfigError) as info:
        build("masker", "test_reg_stripes", widht=3)
    assert "no parameter 'widht'" in str(info.value)
    assert "did you mean 'width'" in str(info.value)
    assert "width, ratio" in str(info.value)


def test_parameters_and_defaults_are_introspectable():
    params = registry.lookup("decoder", "test_reg_factory").parameters()
    assert params == {"depth": 2, "scale": 1.0}
    component = registry.lookup("masker", "test_reg_stripes")
    assert component.origin == "test_registry" and component.parameters()["ratio"] == 0.5
    assert all(v is not inspect.Parameter.empty for v in params.values())


def test_config_errors_name_file_line_and_fix(tmp_path):
    bad_param = tmp_path / "p.gin"
    bad_param.write_text("# header\nmaskers.test_reg_stripes.widht = 3\n")
    with pytest.raises(ConfigError) as info:
        parse([bad_param])
    assert f"{bad_param}:2:" in str(info.value) and "did you mean 'width'" in str(info.value)

    bad_name = tmp_path / "n.gin"
    bad_name.write_text("maskers.test_reg_stripez.width = 3\n")
    with pytest.raises(ConfigError, match=r"n.gin:1: unknown masker 'test_reg_stripez'; closest: test_reg_stripes"):
        parse([bad_name])

    bad_ref = tmp_path / "r.gin"
    bad_ref.write_text("\n\ndecoders.test_reg_factory.scale = @maskers.test_reg_strips()\n")
    with pytest.raises(ConfigError, match=r"r.gin:3: unknown masker 'test_reg_strips'"):
        parse([bad_ref])

    syntax = tmp_path / "s.gin"
    syntax.write_text("maskers.test_reg_stripes.width = 3\nmaskers.test_reg_stripes.ratio = 0.5 0.1\n")
    with pytest.raises(ConfigError, match=r"s.gin:2: gin syntax error"):
        parse([syntax])

    with pytest.raises(ConfigError, match=r"gin file not found: .*missing.gin"):
        parse([tmp_path / "missing.gin"])


def test_files_compose_in_order_and_bindings_win(tmp_path):
    a, b = tmp_path / "a.gin", tmp_path / "b.gin"
    a.write_text("maskers.test_reg_stripes.width = 1\nmaskers.test_reg_stripes.ratio = 0.1\n")
    b.write_text("maskers.test_reg_stripes.width = 2\n")
    parse([a, b], ["maskers.test_reg_stripes.ratio = 0.9"])
    built = build("masker", "test_reg_stripes")
    assert (built.width, built.ratio) == (2, 0.9)


def test_build_from_a_fresh_interpreter_loads_the_built_ins_and_user_code_is_named():
    """A notebook's first call is ``build`` (DESIGN's registry contract), with no CLI to load the
    built-ins first; a user's own component is listed under its module, and a clash with a
    built-in name is refused at the user's register, naming both."""
    import subprocess
    import sys

    code = """
from mlr_registry import build, register, registry
masker = build("masker", "cube", mask_ratio=0.75)
print(type(masker).__name__, masker.mask_ratio)
@register("masker", "mine")
class Mine:
    pass
print(registry.lookup("masker", "mine").origin, registry.lookup("masker", "cube").origin)
try:
    register("masker", "cube")(Mine)
except Exception as exc:
    print(type(exc).__name__, exc)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "CubeMasker 0.75"
    assert lines[1] == "__main__ built-in"
    assert lines[2].startswith("RegistryError masker 'cube' is already registered by built-in")
    assert "__main__ (__main__) tried to register it again" in lines[2]
