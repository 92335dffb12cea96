"""Start-up hook that lets BasicSR's own scripts train with erl_plugin.

``pip install`` (regular or editable) puts ``erl_plugin_hook.pth`` into site-packages; Python runs
it at start-up, which calls :func:`install`. That only inserts a finder to ``sys.meta_path``: no
torch, no basicsr, nothing slow. The first time ``basicsr`` is imported, which ``basicsr/train.py``
and ``basicsr/test.py`` do first, whether run as scripts, with ``-m`` or imported, the finder
imports ``erl_plugin`` in its place: the compatibility patches apply before basicsr loads, and the
plugin's networks are registered before the options file is read.

Set ``ERL_PLUGIN_NO_HOOK=1`` to disable it. The hook never raises: if erl_plugin cannot be
imported, it prints one warning and basicsr loads as it would without the plugin.
"""

import os
import sys

DISABLE_ENV = "ERL_PLUGIN_NO_HOOK"


class _LoadPluginFirst:
    """Loader that imports erl_plugin (and through it basicsr) instead of running basicsr alone."""

    def __init__(self, upstream):
        self.upstream = upstream

    def create_module(self, spec):
        return self.upstream.create_module(spec)

    def exec_module(self, module):
        # The import system reads sys.modules["basicsr"] after this returns, so the module that
        # erl_plugin's own import of basicsr leaves there replaces this placeholder.
        name = module.__name__
        del sys.modules[name]
        try:
            import erl_plugin  # noqa: F401
        except Exception as error:  # the hook must never break a plain basicsr
            print(f"erl_plugin_hook: erl_plugin not loaded ({error!r}); set {DISABLE_ENV}=1", file=sys.stderr)
            if name not in sys.modules:
                sys.modules[name] = module
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


def install():
    """Put the finder first on sys.meta_path unless disabled or there. Run by erl_plugin_hook.pth."""
    try:
        if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
            return
        if not any(isinstance(finder, BasicsrFinder) for finder in sys.meta_path):
            sys.meta_path.insert(0, BasicsrFinder())
    except Exception:
        pass
