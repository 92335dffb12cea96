"""The training engine: ``erl-train``/``erl-test``'s pipelines and runner, options checks, basicsr 1.4.2 fixes.

``erl_plugin.train`` and ``erl_plugin.test`` are the entry points built on :mod:`erl_plugin.engine.entry`.
"""
