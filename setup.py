"""Installs erl_plugin, its entry points and the start-up hook (``erl_plugin_hook.pth``).

The hook file goes to the root of site-packages for both ``pip install .`` and
``pip install -e .``: ``build_py`` adds it to regular wheels, ``editable_wheel`` to editable ones.
"""

import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HOOK_PTH = "erl_plugin_hook.pth"


class BuildPyWithHook(build_py):
    """Regular wheels: copy the hook's .pth next to the packages."""

    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            self.copy_file(HOOK_PTH, f"{self.build_lib}/{HOOK_PTH}")

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), f"{self.build_lib}/{HOOK_PTH}"]


class EditableWheelWithHook(editable_wheel):
    """Editable wheels: every file in the unpacked tree lands in the wheel; add the hook there.

    ``_install_namespaces`` is the one step that receives that tree (setuptools >= 64).
    """

    def _install_namespaces(self, installation_dir: str, pth_prefix: str) -> None:
        super()._install_namespaces(installation_dir, pth_prefix)
        shutil.copy(HOOK_PTH, installation_dir)


setup(
    name="erl-plugin",
    version="0.1.0",
    description="ERL-Net (Entangled Representation Learning for single-image deraining) for BasicSR",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["erl_plugin", "erl_plugin.*"]),
    py_modules=["erl_plugin_hook"],
    install_requires=[
        "torch>=2.4",
        "torchvision",
        "basicsr==1.4.2",
        "mmengine==0.10.7",
        "opencv-python",
        "lmdb>=2",
        "numpy",
        "scikit-image",
        "pyyaml",
        "tqdm",
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist", "ruff", "onnx", "onnxruntime", "spandrel>=0.4"],
        "export": ["onnx", "onnxruntime"],
        "backbones": ["spandrel>=0.4"],
    },
    entry_points={
        "console_scripts": [
            "erl-train = erl_plugin.train:main",
            "erl-test = erl_plugin.test:main",
            "erl-derain = erl_plugin.cli.derain:main",
            "erl-evaluate = erl_plugin.cli.evaluate:main",
            "erl-analyze = erl_plugin.cli.analyze:main",
            "erl-leaderboard = erl_plugin.cli.leaderboard:main",
            "erl-create-lmdb = erl_plugin.cli.create_lmdb:main",
            "erl-synthesize-rain = erl_plugin.cli.synthesize_rain:main",
            "erl-headroom = erl_plugin.cli.headroom:main",
            "erl-export = erl_plugin.cli.export:main",
        ]
    },
    cmdclass={"build_py": BuildPyWithHook, "editable_wheel": EditableWheelWithHook},
)
