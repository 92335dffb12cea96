"""Start-up hook that lets BasicSR's own scripts train with erl_plugin, and leaves every other program's
basicsr as upstream.

``pip install`` (regular or editable) puts ``erl_plugin_hook.pth`` into site-packages; Python runs
it at start-up, which calls :func:`install`. That only inserts a finder to ``sys.meta_path``: no
torch, no basicsr, nothing slow. The first time ``basicsr`` is imported:

- when the program is BasicSR's own ``train.py`` or ``test.py`` (a checkout's or the installed
  package's, run as a script or with ``-m``), the finder imports ``erl_plugin`` in its place, so the
  plugin's classes are registered before the options file is read, and applies the fixes those
  scripts need here (``erl_plugin.engine.compat.BASICSR_SCRIPTS``: CPU process groups, DDP and resume
  without CUDA, safe YAML, ...);
- in any other program basicsr loads unchanged, with only what it needs to import at all on today's
  torchvision (:func:`alias_functional_tensor`). Such a program imports ``erl_plugin`` itself to use
  the plugin.

A second finder (:class:`PluginFinder`) keeps a clone's folder from shadowing the installed
``erl_plugin`` when Python runs from the folder above it. Set ``ERL_PLUGIN_NO_HOOK=1`` to disable both.
The hook never raises: if erl_plugin cannot be imported, it prints one warning and basicsr loads as it
would without the plugin.
"""

import os
import sys

DISABLE_ENV = "ERL_PLUGIN_NO_HOOK"


def alias_functional_tensor() -> None:
    """Give basicsr 1.4.2 the ``torchvision.transforms.functional_tensor`` that torchvision 0.17 removed
    (basicsr takes only ``rgb_to_grayscale`` from it, which lives in ``transforms.functional`` now)."""
    import importlib.util

    if importlib.util.find_spec("torchvision.transforms.functional_tensor") is None:
        import torchvision.transforms.functional as functional

        sys.modules["torchvision.transforms.functional_tensor"] = functional


def is_basicsr_script() -> bool:
    """Whether this program is BasicSR's own ``train.py`` or ``test.py``, as a script or with ``-m``."""
    argv = getattr(sys, "orig_argv", [])
    if "-m" in argv[:-1] and argv[argv.index("-m") + 1] in ("basicsr.train", "basicsr.test"):
        return True
    main = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] not in ("", "-c", "-m") else ""
    return os.path.basename(main) in ("train.py", "test.py") and os.path.basename(os.path.dirname(main)) == "basicsr"


class _LoadPluginFirst:
    """Loader of ``basicsr``: in BasicSR's own scripts it imports erl_plugin (and through it basicsr);
    elsewhere it runs basicsr alone, as upstream, after the one alias it needs to import."""

    def __init__(self, upstream):
        self.upstream = upstream

    def create_module(self, spec):
        return self.upstream.create_module(spec)

    def exec_module(self, module):
        # The import system reads sys.modules["basicsr"] after this returns, so the module that
        # erl_plugin's own import of basicsr leaves there replaces this placeholder.
        name = module.__name__
        if not is_basicsr_script():
            alias_functional_tensor()
            self.upstream.exec_module(module)
            return
        del sys.modules[name]
        try:
            from erl_plugin.engine import compat

            compat.apply_to_basicsr_scripts()
        except Exception as error:  # the hook must never break a plain basicsr
            print(f"erl_plugin_hook: erl_plugin not loaded ({error!r}); set {DISABLE_ENV}=1", file=sys.stderr)
            if name not in sys.modules:
                sys.modules[name] = module
                alias_functional_tensor()
                self.upstream.exec_module(module)


class BasicsrFinder:
    """Meta path finder that wraps the loader of the top-level ``basicsr`` package, once."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "basicsr":
            return None
        try:
            sys.meta_path.remove(self)
            if "erl_plugin" in sys.modules:  # erl_plugin is importing basicsr itself
                return None
            for finder in sys.meta_path:
                find_spec = getattr(finder, "find_spec", None)
                spec = find_spec(fullname, path, target) if find_spec else None
                if spec is not None:
                    break
            else:
                return None
            if spec.loader is None:
                return None
            spec.loader = _LoadPluginFirst(spec.loader)
            return spec
        except Exception:
            return None


class PluginFinder:
    """Meta path finder that keeps a folder named ``erl_plugin`` without ``__init__.py`` from shadowing the
    installed package. Run from the parent of a clone named ``erl_plugin``, Python's path finder takes the
    clone as a namespace package before an editable install's finder is asked; this finder asks every other
    finder in order and takes the first real package."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "erl_plugin" or path is not None:
            return None
        try:
            for finder in sys.meta_path:
                find_spec = getattr(finder, "find_spec", None)
                spec = find_spec(fullname, path, target) if finder is not self and find_spec else None
                if spec is not None and spec.loader is not None:
                    return spec
        except Exception:
            pass
        return None


def install():
    """Put the finders first on sys.meta_path unless disabled or there. Run by erl_plugin_hook.pth."""
    try:
        if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
            return
        for finder_type in (PluginFinder, BasicsrFinder):
            if not any(isinstance(finder, finder_type) for finder in sys.meta_path):
                sys.meta_path.insert(0, finder_type())
    except Exception:
        pass
