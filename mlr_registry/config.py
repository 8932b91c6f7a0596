"""Gin composition with errors a researcher can act on, and the operative config as params.

Gin's own errors are accurate but long and generic ("No configurable matching 'x'"). Here they
become one line that names the file and line, the kind, the unknown name and the closest
registered names, or the component's real parameters.
"""

from __future__ import annotations

import contextlib
import logging
import re
import tokenize
from collections.abc import Iterable
from pathlib import Path

import gin
from gin import config as gin_config

from mlr_registry import ablations, registry
from mlr_registry.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
_LOCATION = re.compile(r'In (?:file "(?P<file>[^"]+)", line (?P<line>\d+)|bindings string)')
_NO_CONFIGURABLE = re.compile(r"No configurable matching (?:reference )?'@?(?P<selector>[\w./]+?)(?:\(\))?'")
_NO_PARAMETER = re.compile(r"Configurable '(?P<selector>[\w.]+)' doesn't have a parameter named '(?P<param>\w+)'")


# Parameters that moved: (kind, component, parameter) -> what to write instead.
RENAMED_PARAMETERS: dict[tuple[str, str, str], str] = {
    ("agent", "sac", "aux_warmup"): "each auxiliary loss declares its own warm-up: losses.<name>.lr_warmup "
                                    "(e.g. losses.mlr.lr_warmup = 6000; 0 = a constant lr)",
}
# How a run executes is configured once, for the whole run (mlr_registry/execution).
_EXECUTION = "how a run executes is set once for the run: execution.{new} (see docs/gpu.md)"
for _agent in ("rainbow", "sac"):
    for _name in ("precision", "compile", "compile_mode", "compile_scope", "channels_last", "cudnn_benchmark"):
        RENAMED_PARAMETERS[("agent", _agent, _name)] = _EXECUTION.format(new=_name)
for _replay in ("prioritized_sequence", "uniform_sequence"):
    RENAMED_PARAMETERS[("replay", _replay, "compile")] = _EXECUTION.format(new="replay_compile")
RENAMED_PARAMETERS[("decoder", "transformer", "attention")] = _EXECUTION.format(new="attention")
for _trainer, _names in (("atari100k", ("overlap_env_step", "pipeline_updates")), ("dmc", ("overlap_env_step",))):
    for _name in _names:
        RENAMED_PARAMETERS[("trainer", _trainer, _name)] = _EXECUTION.format(new=_name)


def _location(message: str) -> str:
    match = _LOCATION.search(message)
    if match is None:
        return ""
    if match.group("file"):
        return f"{match.group('file')}:{match.group('line')}: "
    return "--bind: "


def translate_gin_message(message: str) -> str:
    """One actionable line for a gin error message (unknown names get the closest registered
    ones); the sweep's ``--grid`` uses it too."""
    where = _location(message)
    unknown = _NO_CONFIGURABLE.search(message)
    if unknown:
        selector = unknown.group("selector").split("/")[-1]
        parts = selector.split(".")
        kind = registry.kind_of_gin_module(parts[-2]) if len(parts) > 1 else None
        if kind is not None:
            return where + registry.unknown_component_message(kind, parts[-1])
        return where + (f"unknown configurable {selector!r}; components are named <kind>s.<name> "
                        "(e.g. maskers.cube); `python -m mlr_registry.run --list` shows them")
    bad_param = _NO_PARAMETER.search(message)
    if bad_param:
        component = registry.find_selector(bad_param.group("selector"))
        param = bad_param.group("param")
        if component is not None and (component.kind, component.name, param) in RENAMED_PARAMETERS:
            return where + (f"{component.selector}.{param} is gone; "
                            f"{RENAMED_PARAMETERS[(component.kind, component.name, param)]}")
        if component is not None:
            return where + registry.unknown_parameter_message(component, bad_param.group("param"))
    return where + message.splitlines()[0]


class _DropMissingSearchPaths(logging.Filter):
    """Gin logs an ERROR for every search path an include is not under before it finds the file."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Path not found")


@contextlib.contextmanager
def _quiet_include_search():
    root = logging.getLogger()
    quiet = _DropMissingSearchPaths()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def parse(gin_files: Iterable[str | Path], bindings: Iterable[str] = ()) -> None:
    """Clear gin, then parse the files in order and the bindings last (later wins).

    Components must be registered first (``registry.load_all()``) so that gin can check names.
    Ablation files must follow a base config, and a benchmark's own ablation that benchmark's
    base (:mod:`mlr_registry.ablations`).
    """
    gin_files = list(gin_files)
    ablations.check_order(gin_files)
    gin.clear_config()
    for search_path in (Path.cwd(), REPO_ROOT):
        if str(search_path) not in gin_config._LOCATION_PREFIXES:
            gin.add_config_file_search_path(str(search_path))
    for path in gin_files:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"gin file not found: {path} (looked relative to {Path.cwd()}); "
                              "pass an existing file, e.g. --gin gin/smoke/atari_mlr.gin")
        _parse_one(lambda p=path: gin.parse_config_file(str(p)), str(path))
    for binding in bindings:
        _parse_one(lambda b=binding: gin.parse_config(b), "--bind " + repr(binding), binding)
    ablations.check_benchmark(gin_files, _trainer_name())


def _trainer_name() -> str | None:
    """The registered name of the parsed config's ``experiment.trainer``, if it binds one."""
    try:
        reference = gin.query_parameter("experiment.trainer")
    except ValueError:
        return None
    return getattr(getattr(reference, "configurable", None), "name", None)


_LITERALS = (bool, int, float, str, type(None))


def _literal(value: object) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_literal(v) for v in value)
    if isinstance(value, dict):
        return all(_literal(k) and _literal(v) for k, v in value.items())
    return isinstance(value, _LITERALS)


def _resolve_include(name: str) -> Path:
    """An included file as gin finds it: relative to the working directory, else to the repo."""
    path = Path(name)
    return path if path.is_absolute() or path.is_file() else REPO_ROOT / path


def file_bindings(path: str | Path, skip: Iterable[Path] = ()) -> dict[str, str]:
    """What a gin file binds, itself and through its includes (in gin's order: a later binding
    wins), as ``{"losses.mlr.target_tau": "0.01"}``: each value as gin text that a ``--bind``
    reproduces. Included files in ``skip`` (resolved paths) are not read, nor their includes.
    Read with gin's own parser; nothing is registered or bound."""
    from gin import config_parser

    skipped = {Path(p).resolve() for p in skip}
    found: dict[str, str] = {}
    text = Path(path).read_text()
    for statement in config_parser.ConfigParser(text, gin_config.ParserDelegate(skip_unknown=True)):
        if isinstance(statement, config_parser.IncludeStatement):
            included = _resolve_include(statement.filename)
            if included.resolve() not in skipped:
                found.update(file_bindings(included, skipped))
        elif isinstance(statement, config_parser.BindingStatement):
            scope = f"{statement.scope}/" if statement.scope else ""
            # a macro (``BLOCK_SIZE = 4``) has no parameter name
            key = f"{scope}{statement.selector}" + (f".{statement.arg_name}" if statement.arg_name else "")
            found[key] = repr(statement.value) if _literal(statement.value) else _source_value(path, statement)
    return found


def included_files(path: str | Path) -> list[Path]:
    """Every file a gin file includes, directly or through other includes (resolved paths)."""
    from gin import config_parser

    found: list[Path] = []
    for statement in config_parser.ConfigParser(Path(path).read_text(), gin_config.ParserDelegate(skip_unknown=True)):
        if isinstance(statement, config_parser.IncludeStatement):
            included = _resolve_include(statement.filename)
            found += [included.resolve(), *included_files(included)]
    return found


def _source_value(path: str | Path, statement) -> str:
    """A reference or macro binding's value as written (``@maskers.tube()``): one line only."""
    line = statement.location.line_content.split("#", 1)[0]
    value = line.split("=", 1)[1].strip()
    if value.count("(") != value.count(")") or value.count("[") != value.count("]"):
        raise ConfigError(f"{path}:{statement.location.line_num}: the value of {statement.arg_name} spans several "
                          "lines; write it on one line so that it can be re-bound")
    return value


_BARE_WORD = re.compile(r"Failed to parse token '(?P<token>[^']*)'")


def _unquoted_hint(binding: str, token: str) -> str:
    """``atari.game = pong`` -> ``atari.game = 'pong'``: the binding with ``token`` quoted."""
    key, sep, value = binding.split("#", 1)[0].partition("=")
    if not sep:
        return repr(token)
    quoted = re.sub(rf"(?<![\w'\"]){re.escape(token)}(?![\w'\"])", repr(token), value.strip(), count=1)
    return f"{key.strip()} = {quoted}"


def _syntax_message(exc: SyntaxError, where: str, binding: str | None) -> str:
    """One line for a gin syntax error. A bare word as a value (``atari.game = pong``: gin's
    message is Python's "malformed node or string ... <ast.Name object ...>") gets the binding
    written with quotes."""
    bare = _BARE_WORD.search(exc.msg or "")
    token = bare.group("token") if bare else ""
    if not token.isidentifier():
        return f"{where}: gin syntax error: {(exc.msg or '').splitlines()[0]}"
    line = binding if binding is not None else (exc.text or "").strip()
    fixed = _unquoted_hint(line, token)
    shown = f'--bind "{fixed}"' if binding is not None else fixed
    return f"{where}: {token} is not a gin value; a string needs quotes: {shown}"


def _parse_one(parse_fn, source: str, binding: str | None = None) -> None:
    try:
        with _quiet_include_search():
            parse_fn()
    except SyntaxError as exc:
        where = f"{exc.filename}:{exc.lineno}" if exc.filename and exc.filename != "<unknown>" else source
        raise ConfigError(_syntax_message(exc, where, binding)) from exc
    except tokenize.TokenError as exc:
        raise ConfigError(f"{source}: gin syntax error: {exc.args[0]} (an unclosed bracket or quote?)") from exc
    except KeyError as exc:  # gin: "Ambiguous selector 'dmc', matches ['trainers.dmc', 'envs.dmc']."
        text = str(exc.args[0]) if exc.args else str(exc)
        raise ConfigError(f"{source}: {text.splitlines()[0].strip(chr(34) + chr(39)).rstrip('.')}; "
                          "write the full name") from exc
    except (OSError, ValueError) as exc:
        text = str(exc)
        if isinstance(exc, IOError) and "Unable to open file" in text:
            raise ConfigError(f"{source}: included gin file not found: {text.splitlines()[0]}") from exc
        raise ConfigError(translate_gin_message(text)) from exc


def translate_call_error(exc: BaseException) -> ConfigError | None:
    """A ConfigError for a gin error raised while calling configurables, else None."""
    text = str(exc)
    if isinstance(exc, ValueError) and (_NO_CONFIGURABLE.search(text) or _NO_PARAMETER.search(text)):
        return ConfigError(translate_gin_message(text))
    if "Required bindings" in text or "REQUIRED" in text:
        return ConfigError(text.splitlines()[0])
    called = re.search(r"In call to configurable '([\w.]+)'", text)
    if isinstance(exc, TypeError) and called and "required positional argument" in text:
        # e.g. @encoders.nature_cnn() bound as a masker: its owner, not gin, gives it its inputs
        return ConfigError(f"gin called {called.group(1)} itself and it failed: {text.splitlines()[0]} "
                           "(is it bound where another kind of component is expected, or should the "
                           "reference be written without '()'?)")
    if isinstance(exc, TypeError) and called and "unexpected keyword argument" in text:
        # e.g. a plugin encoder whose constructor does not take the in_channels its agent passes
        return ConfigError(f"{called.group(1)} does not take what its owner passes it: {text.splitlines()[0]} "
                           "(docs/plugins.md#what-each-kind-is-called-with says what each kind is called with)")
    return None


def operative_params() -> dict[str, str]:
    """The operative gin config flattened to ``selector.param -> value`` (for MLflow params).
    A macro's value stands where it is used (``losses.mlr.sequence_length -> 16``, not
    ``%SEQUENCE_LENGTH``), so that runs compare by what they ran whichever file set it; the
    macros themselves are not listed."""
    flat: dict[str, str] = {}
    for (scope, selector), params in gin_config._OPERATIVE_CONFIG.items():
        if selector.endswith("gin.macro"):
            continue
        prefix = f"{scope}/" if scope else ""
        for name, value in params.items():
            flat[f"{prefix}{selector}.{name}"] = repr(_macro_value(value))
    return dict(sorted(flat.items()))


def query(selector: str) -> object:
    """The parsed config's value of ``selector`` (``gin.query_parameter``), a macro's value in
    place of the macro: ``losses.mlr.sequence_length`` -> 16, not ``%SEQUENCE_LENGTH``."""
    return _macro_value(gin.query_parameter(selector))


def _macro_value(value: object) -> object:
    """A macro reference's value (``%SEQUENCE_LENGTH`` -> 16), in lists too; others as they are."""
    reference = getattr(value, "configurable", None)
    if reference is not None and reference.name == "macro":
        return _macro_value(gin.query_parameter("%" + value.scoped_selector.split("/", 1)[0]))
    if isinstance(value, (list, tuple)):
        return type(value)(_macro_value(v) for v in value)
    return value


def operative_config_str() -> str:
    return gin.operative_config_str()


def config_str() -> str:
    """Every binding parsed (used or not), as gin text."""
    return gin.config_str()
