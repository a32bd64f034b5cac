"""Command-line mistakes as one line and exit code 2, at the absl / ml_collections boundary.

absl parses the flags, and ml_collections loads ``--config path[:arg]`` and applies the
``--config.<field>=value`` overrides, before ``main`` runs, so `cli.run_user_main` never sees
their errors: a misspelt override is a KeyError/AttributeError traceback, a wrong path an
IOError raised on first use, an unknown preset a UserError traceback. `parse_flags` (every entry
point's ``flags_parser``, through `cli.run_app`) parses as absl would and, on a failure, works
out which field, preset, option or path is at fault and prints that on one line:

    error: config.optim.learnin_rate: no such field; did you mean config.optim.learning_rate?

An error it cannot trace back to the command line (a bug in a config file) keeps its traceback.
"""

import importlib.util
import os
import re
import sys
from typing import Any, NoReturn, Sequence

import ml_collections
from absl import flags
from ml_collections.config_flags import config_flags

from medclip_jax.errors import UserError
from medclip_jax.settings import no_such_field

FLAGS = flags.FLAGS
EXIT_USAGE = 2


def exit_with(message: str) -> NoReturn:
    print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USAGE)


def config_flag_names() -> list[str]:
    return [name for name in FLAGS if config_flags.is_config_flag(FLAGS[name])]


def config_argument(name: str, argv: Sequence[str]) -> str | None:
    """The ``path[:arg]`` given to ``--<name>`` (the last one), else the flag's default."""
    given = None
    for i, arg in enumerate(argv):
        if arg in (f"--{name}", f"-{name}") and i + 1 < len(argv):
            given = argv[i + 1]
        elif arg.startswith((f"--{name}=", f"-{name}=")):
            given = arg.split("=", 1)[1]
    if given is not None:
        return given
    default = FLAGS[name].default_as_str
    return None if default in (None, "None", "'None'") else default.strip("'\"")


def load_config(name: str, spec: str) -> Any:
    """``--<name>=path[:arg]`` loaded as ml_collections would; a missing file or a UserError of
    its `get_config` (an unknown preset or option) is one line naming it."""
    path, colon, arg = spec.partition(":")
    if not path:
        raise UserError(f"--{name}={spec}: no config file given")
    if not os.path.isfile(path):
        raise UserError(f"--{name}={spec}: no config file {path} (from {os.getcwd()})")
    module_spec = importlib.util.spec_from_file_location(f"{name}_config_check", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if colon else module.get_config()


def overrides(name: str, argv: Sequence[str]) -> list[tuple[str, str | None]]:
    """(dotted field, value as typed or None) of each ``--<name>.<field>[=value]``."""
    found = []
    pattern = re.compile(rf"^--?(no)?{re.escape(name)}\.([^=]+)(=(.*))?$")
    for arg in argv:
        match = pattern.match(arg)
        if match:
            found.append((match.group(2), match.group(4)))
    return found


def field_value(config: Any, dotted: str, root: str) -> Any:
    """The value at `dotted`, or a UserError naming the first missing part (closest match)."""
    node, path = config, root
    for part in dotted.split("."):
        path = f"{path}.{part}"
        keys = list(node.keys()) if hasattr(node, "keys") else []
        if part not in keys:
            raise no_such_field(path, keys)
        node = node[part]
    return node


def kind_name(value: Any) -> str:
    if isinstance(value, bool):
        return "True or False"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (tuple, list)):
        return "a tuple, e.g. '(1, 2)'"
    return type(value).__name__


def diagnose(argv: Sequence[str], error: BaseException) -> str | None:
    """The one-line cause of a failed flag parse, or None when it is not a config mistake."""
    for name in config_flag_names():
        spec = config_argument(name, argv)
        if spec is None:
            continue
        try:
            config = load_config(name, spec)
        except UserError as e:
            return str(e)
        for dotted, typed in overrides(name, argv):
            try:
                value = field_value(config, dotted, name)
            except UserError as e:
                return str(e)
            if f"--{name}.{dotted}=" in str(error):
                return f"{name}.{dotted}: cannot read {typed!r} as {kind_name(value)}"
    if isinstance(error, flags.Error):
        return str(error)
    return None


def check_loaded(argv: Sequence[str]) -> None:
    """ml_collections defers a config file's load error to the first use: surface it now."""
    for name in config_flag_names():
        value = FLAGS[name].value
        if value is not None and not isinstance(value, ml_collections.ConfigDict):
            spec = config_argument(name, argv) or ""
            message = diagnose(argv, IOError(spec))
            raise UserError(message or f"--{name}={spec}: the config could not be loaded")


def with_default_config(argv: list[str], name: str, spec: str) -> list[str]:
    """`argv` with ``--<name>=spec`` first when it names no config: a config flag's own default
    would be parsed, overrides and all, while its module is imported, outside `parse_flags`."""
    given = any(arg in (f"--{name}", f"-{name}") or arg.startswith((f"--{name}=", f"-{name}="))
                for arg in argv[1:])
    return list(argv) if given else [argv[0], f"--{name}={spec}", *argv[1:]]


def parse_flags(argv: list[str]) -> list[str]:
    """`absl.app.run`'s flags parser: absl's parse, with command-line mistakes as one line on
    stderr and exit code 2. Returns the positional arguments, as absl's own does."""
    try:
        remaining = FLAGS(argv)
        check_loaded(argv)
        return remaining
    except UserError as e:
        exit_with(str(e))
    except Exception as e:  # noqa: BLE001 - re-raised unless traced to the command line
        message = diagnose(argv, e)
        if message is None:
            raise
        exit_with(message)
