"""The suite's warm interpreter runs a script, a module and ``-c`` code as a fresh ``python`` does, also for a shell."""

import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import run_python, warm_python_socket
from warm_python import needs_cold_start, write_shim

REPORT = """
import json, os, sys
import torch
print(json.dumps({
    "argv": sys.argv, "path0": sys.path[0], "cwd": os.getcwd(), "name": __name__,
    "env": os.environ.get("WARM_TEST"), "threads": torch.get_num_threads(),
    "plugin_loaded": "erl_plugin" in sys.modules, "basicsr_loaded": "basicsr" in sys.modules,
    "extra_on_path": os.environ.get("PYTHONPATH", "") in sys.path,
}))
print("to stderr", file=sys.stderr)
sys.exit(int(os.environ.get("WARM_EXIT", "0")))
"""


def _both(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, ...]:
    return run_python(args, cwd, env), run_python(args, cwd, env, cold=True)


@pytest.mark.parametrize("form", ["script", "module", "code"])
def test_a_fork_runs_what_a_fresh_interpreter_runs(tmp_path: Path, form: str) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "report.py").write_text(REPORT)
    (tmp_path / "lib").mkdir()
    args = {
        "script": ["pkg/report.py", "--flag", "x y"],
        "module": ["-m", "pkg.report", "--flag", "x y"],
        "code": ["-c", REPORT, "--flag", "x y"],
    }[form]
    env = {"WARM_TEST": "value", "WARM_EXIT": "3", "PYTHONPATH": str(tmp_path / "lib")}
    env.update(OMP_NUM_THREADS="2", MKL_NUM_THREADS="2")
    warm, cold = _both(args, tmp_path, env)
    assert warm.returncode == cold.returncode == 3
    assert warm.stdout == cold.stdout and warm.stderr == cold.stderr == "to stderr\n"
    assert '"plugin_loaded": false, "basicsr_loaded": false' in warm.stdout
    assert '"threads": 2' in warm.stdout and '"extra_on_path": true' in warm.stdout


def test_an_uncaught_exception_and_a_timeout_are_reported_as_by_subprocess(tmp_path: Path) -> None:
    warm, cold = _both(["-c", "raise KeyError('k')"], tmp_path, {})
    assert warm.returncode == cold.returncode == 1
    assert warm.stderr.splitlines()[-1] == cold.stderr.splitlines()[-1] == "KeyError: 'k'"
    with pytest.raises(subprocess.TimeoutExpired):
        run_python(["-c", "import time; print('started', flush=True); time.sleep(60)"], tmp_path, timeout=2)
    assert run_python(["-c", "print('after')"], tmp_path).stdout == "after\n"  # the server carries on


def test_start_up_settings_get_a_fresh_interpreter() -> None:
    base = {"PATH": "/bin", "OMP_NUM_THREADS": "1"}
    assert not needs_cold_start(["-m", "x"], {**base, "OMP_NUM_THREADS": "2", "PYTHONPATH": "a"}, base)
    assert not needs_cold_start(["tool.py"], {**base, "ERL_PLUGIN_DISABLE": "ddp_cpu"}, base)
    for env in ({**base, "ERL_PLUGIN_NO_HOOK": "1"}, {**base, "PYTHONHASHSEED": "0"}, {**base, "MKL_X": "1"}):
        assert needs_cold_start(["-m", "x"], env, base)
    assert needs_cold_start(["-X", "importtime", "-c", "pass"], base, base)


def test_a_shell_runs_python_warm_through_the_shim(tmp_path: Path) -> None:
    shims = tmp_path / "bin"
    shims.mkdir()
    write_shim(str(shims / "python"), "python", warm_python_socket(), [])
    env = {**os.environ, "PATH": f"{shims}{os.pathsep}{os.environ['PATH']}"}

    def shell(command: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True)

    code = "import sys; print(sys.stdin.read().upper(), 'torch' in sys.modules); print('e', file=sys.stderr)"
    code += "; sys.exit(4)"
    warm = shell(f'echo in | python -c "{code}" a')
    assert (warm.returncode, warm.stdout, warm.stderr) == (4, "IN\n True\n", "e\n")  # torch: preloaded
    cold = shell(f'echo in | PYTHONHASHSEED=0 python -c "{code}" a')  # a start-up variable: the real interpreter
    assert (cold.returncode, cold.stdout, cold.stderr) == (4, "IN\n False\n", "e\n")
    assert shell('python -c "print(7)" > out.txt && echo "$(python -c "print(6)")" >> out.txt').returncode == 0
    assert (tmp_path / "out.txt").read_text() == "7\n6\n"
    # A shell killed on a timeout takes its command along.
    sleeper = "import os, time; open('pid', 'w').write(str(os.getpid())); time.sleep(60)"
    assert shell(f'timeout 3 python -c "{sleeper}"').returncode == 124
    pid = int((tmp_path / "pid").read_text())
    for _ in range(50):
        if not Path(f"/proc/{pid}").exists():
            break
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists()
