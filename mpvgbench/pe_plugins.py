"""Position-embedding methods from outside the package: a Python file or an installed package.

A plugin is a module that defines a :class:`~mpvgbench.models.pe.PositionEncoding` subclass and
registers it::

    from mpvgbench.models.pe import PositionEncoding
    from mpvgbench.pe_plugins import register_pe_method

    @register_pe_method("my_pe", families=("micro", "deit"), base="default")
    class MyPE(PositionEncoding):
        ...

It is found in one of two ways:

- a file named in a spec, ``plugins: [path/to/my_pe.py]`` (relative to the spec file), or
  ``mpvgbench methods --plugin path/to/my_pe.py``;
- an installed distribution's entry point in the group ``mpvgbench.pe_methods`` (the value is the
  module, or the class itself, which is then registered under the entry point's name).

A plugin's identity is its module name and a hash of its source file: it goes into the job key of
every run that uses it (``PEMethod.plugin``), so an edited plugin never reuses stale results.
Loaded files are also listed in the environment (``MPVGBENCH_PE_PLUGINS``), so a worker process the
executor starts loads the same plugins before it reads its config. Whatever a plugin raises while
it loads becomes one :class:`PluginError` line naming the plugin (exit 2 at the command line).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Optional, TypeVar

from mpvgbench.errors import MpvgbenchError
from mpvgbench.methods import ENCODINGS, PRESETS, EncodingInfo, register_preset, resolve_method, set_plugin_loader

ENV_VAR = "MPVGBENCH_PE_PLUGINS"
ENCODING_FAMILIES: tuple[str, ...] = ("micro", "deit", "vit_lite", "t2t")  # backbones with pe_encoding
ENTRY_POINT_GROUP = "mpvgbench.pe_methods"

__all__ = ["ENTRY_POINT_GROUP", "ENV_VAR", "PluginError", "load_configured_plugins", "load_plugin_file",
           "register_pe_method", "source_identity"]

T = TypeVar("T")


class PluginError(MpvgbenchError, ValueError):
    """A plugin that cannot be loaded or registered (the message names the plugin)."""


def source_identity(module_name: str, source: bytes) -> str:
    """``module:`` plus 16 hex digits of sha256 over the source: what the job key holds."""
    return f"{module_name}:{hashlib.sha256(source).hexdigest()[:16]}"


def _module_identity(module_name: str) -> tuple[str, str]:
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None)
    if path is None:
        raise PluginError(f"plugin {module_name}: its PE method must live in a module with a source file")
    short = module_name.rsplit(".", 1)[-1].removeprefix("mpvgbench_plugin_")
    return source_identity(short, Path(path).read_bytes()), str(path)


def register_pe_method(
    name: str,
    *,
    families: tuple[str, ...] = ENCODING_FAMILIES,
    base: str = "default",
    carries_position: bool = True,
    summary: str = "",
    **knobs: Any,
) -> Callable[[T], T]:
    """Class decorator: register a ``PositionEncoding`` subclass as PE method ``name``.

    ``base`` and ``knobs`` give the preset's five knobs (e.g. ``add_to_input=False`` for a method
    that replaces the absolute PE); ``families`` the model families it is defined for (those whose
    backbones build a method module: the plain ViTs and T2T-ViT; Swin and CeiT do not yet);
    ``carries_position``: it gives position information by itself.
    """

    def register(cls: T) -> T:
        identity, path = _module_identity(getattr(cls, "__module__", ""))
        unsupported = sorted(set(families) - set(ENCODING_FAMILIES))
        if unsupported:
            raise PluginError(f"plugin {identity}: family {unsupported[0]!r} builds no PE method module; "
                              f"choose from {', '.join(ENCODING_FAMILIES)}")
        known = ENCODINGS.get(name)
        if known is not None and known.identity is None:
            raise PluginError(f"plugin {identity}: {name!r} is a built-in PE method; choose another name")
        text = summary or ((getattr(cls, "__doc__", None) or "").strip().splitlines() or [""])[0]
        ENCODINGS[name] = EncodingInfo(name, text, cls, families=families, carries_position=carries_position,
                                       source=path, identity=identity)
        preset = dataclasses.replace(resolve_method(base), encoding=name, plugin=identity, **knobs)
        if name in PRESETS and PRESETS[name].plugin is not None:
            del PRESETS[name]  # a re-loaded (edited) plugin replaces its own preset
        register_preset(name, preset)
        return cls

    return register


def load_plugin_file(path: str | Path) -> str:
    """Import the plugin file at ``path`` (once per content) and list it in the environment."""
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise PluginError(f"plugin {path}: no such file")
    module_name = "mpvgbench_plugin_" + "".join(c if c.isalnum() else "_" for c in file.stem)
    source = file.read_bytes()
    loaded = sys.modules.get(module_name)
    if loaded is None or getattr(loaded, "__mpvgbench_source__", None) != source:
        spec = importlib.util.spec_from_file_location(module_name, file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        module.__mpvgbench_source__ = source  # type: ignore[attr-defined]
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except PluginError:
            sys.modules.pop(module_name, None)
            raise
        except BaseException as exc:  # noqa: BLE001  a plugin's own failure is one line, exit 2
            sys.modules.pop(module_name, None)
            raise PluginError(f"plugin {path}: {type(exc).__name__}: {_one_line(exc)}") from None
    listed = [p for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    if str(file) not in listed:
        os.environ[ENV_VAR] = os.pathsep.join([*listed, str(file)])
    return module_name


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or "(no message)"


_entry_points_loaded = False


def load_entry_points() -> None:
    """Load every installed ``mpvgbench.pe_methods`` entry point (once per process)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            target = point.load()
        except BaseException as exc:  # noqa: BLE001
            raise PluginError(f"plugin {point.value} (entry point {point.name}): "
                              f"{type(exc).__name__}: {_one_line(exc)}") from None
        if isinstance(target, type) and point.name not in ENCODINGS:
            register_pe_method(point.name)(target)


def load_configured_plugins() -> None:
    """The plugins this process should know: installed entry points and ``MPVGBENCH_PE_PLUGINS``."""
    load_entry_points()
    for path in os.environ.get(ENV_VAR, "").split(os.pathsep):
        if path:
            load_plugin_file(path)


set_plugin_loader(load_configured_plugins)
