"""This project's development tools, run from a checkout and not shipped in the wheel: the seeded study
runner (``tools/study.py``), the benchmark (``tools/benchmark.py``) and the GPU check
(``tools/gpu_check.py``). They build on the installed ``erl_plugin``; nothing in it imports them."""
