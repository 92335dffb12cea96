"""The training engine: basicsr 1.4.2 patches, options checks and the ``erl-train``/``erl-test`` runner.

``erl_plugin.train`` and ``erl_plugin.test`` are the entry points built on :mod:`erl_plugin.engine.entry`.
"""
