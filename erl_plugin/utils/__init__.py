"""What every running job relies on: checkpoints, exact resume, speed options, safe output folders.

The lowest layer: these modules import BasicSR and torch, never another part of the plugin.
"""
