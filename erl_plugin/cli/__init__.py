"""The commands users run, installed as console scripts (``erl-derain``, ``erl-evaluate``, ``erl-analyze``,
``erl-leaderboard``, ``erl-create-lmdb``, ``erl-synthesize-rain``, ``erl-headroom``, ``erl-export``);
``tools/<name>.py`` in a checkout runs the same ``main``. Each returns its exit status: 0 done, 1 done with a
shortfall (skipped files, a missed ``--min-gain-db``, an export that fails its check), 2 bad input before any
work."""

import argparse


def add_network_arguments(parser: argparse.ArgumentParser) -> None:
    """``--opt`` and ``--checkpoint``: the network a command loads, as
    :func:`erl_plugin.evaluation.evaluate.checkpoint_from_options` resolves them."""
    parser.add_argument("--opt", required=True, help="options file whose network_g built the checkpoint")
    parser.add_argument(
        "--checkpoint",
        help="BasicSR checkpoint ({'params': state_dict}); default: the options' path.pretrain_network_g",
    )
