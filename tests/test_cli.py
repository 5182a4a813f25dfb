"""``python -m cupyflash``: every command run as a user runs it (a subprocess), on this machine. Without a GPU (CI)
each command that needs one says so in one line on stderr and exits with status 2; info and --help work anyway."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import cupyflash
from conftest import GPU_SKIP_REASON, requires_gpu

REPO = Path(cupyflash.__file__).resolve().parent.parent
GPU_COMMANDS = [["selftest"], ["bench", "--quick"], ["precompile", "--jobs", "2"], ["precompile", "--variants"],
                ["tune", "--dtype", "tf32"]]
without_gpu = pytest.mark.skipif(GPU_SKIP_REASON is None, reason="checks what happens on a machine without a GPU")


def cli(*args, pythonpath=(), timeout=120):
    """(exit status, stdout, stderr) of ``python -m cupyflash ARGS`` with this checkout's package."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*map(str, pythonpath), str(REPO)]))
    done = subprocess.run([sys.executable, "-m", "cupyflash", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)
    return done.returncode, done.stdout, done.stderr


def test_help_lists_every_command():
    status, out, err = cli("--help")
    assert status == 0 and not err
    assert all(name in out for name in ("info", "selftest", "bench", "precompile", "tune"))


@pytest.mark.parametrize("command", ["info", "selftest", "bench", "precompile", "tune"])
def test_each_command_has_help(command):
    status, out, err = cli(command, "--help")
    assert status == 0 and not err and out.startswith("usage: python -m cupyflash")


def test_version_is_the_package_version():
    status, out, _ = cli("--version")
    assert status == 0 and out.strip() == f"cupyflash {cupyflash.__version__}"


def test_info_runs_anywhere():
    status, out, err = cli("info")
    assert status == 0 and not err, err
    assert out.startswith(f"cupyflash {cupyflash.__version__}") and "NVRTC" in out
    assert ("no GPU visible" in out) == (GPU_SKIP_REASON is not None)


@without_gpu
@pytest.mark.parametrize("args", GPU_COMMANDS, ids=" ".join)
def test_gpu_commands_say_in_one_line_that_there_is_no_gpu(args):
    status, out, err = cli(*args)
    assert status == 2 and not out
    assert err.count("\n") == 1 and err.startswith(f"cupyflash {args[0]}: needs a CUDA GPU and found none"), err


def test_without_cupy_commands_say_how_to_install_it(tmp_path):
    fake = tmp_path / "cupy"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('No module named cupy')\n")
    status, out, err = cli("info", pythonpath=[tmp_path])
    assert status == 0 and "CuPy: not installed (pip install 'cupyflash[cuda12]'" in out and not err, err
    status, out, err = cli("selftest", pythonpath=[tmp_path])
    assert status == 2 and not out and err.count("\n") == 1 and "CuPy is not installed" in err, err


def test_usage_errors_exit_with_argparse_status():
    assert cli("nonsense")[0] == 2
    assert cli("bench", "--no-such-option")[0] == 2


@without_gpu
def test_precompile_reports_a_worker_failure_in_one_line(monkeypatch, capsys):
    """The workers (spawned processes) fail here, reading a GPU that is not there: one line and status 1, not the
    workers' traceback."""
    from cupyflash import DeviceLimits, _cli, _device, precompile

    h100 = DeviceLimits(90, smem_per_block_optin=232448, smem_per_sm=233472, sm_count=132, name="H100")
    monkeypatch.setattr(_cli, "require_gpu", lambda prog: None)
    monkeypatch.setattr(_device, "device_limits", lambda device: h100)
    with pytest.raises(SystemExit) as exit_:
        precompile.main(["--jobs", "1", "--part", "1/2000"])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.count("\n") == 1
    assert err.startswith("cupyflash precompile: compiling failed: "), err


@requires_gpu
def test_selftest_passes():
    status, out, err = cli("selftest", timeout=1800)
    assert status == 0, out + err
    assert "FAIL" not in out and "checks passed" in out


@without_gpu
def test_precompile_kinds_narrows_the_instances(monkeypatch, capsys):
    """--kinds fwd hands the workers forward instances only, all of them (the default: every kind)."""
    from cupyflash import DeviceLimits, _cli, _device, precompile

    h100 = DeviceLimits(90, smem_per_block_optin=232448, smem_per_sm=233472, sm_count=132, name="H100")
    monkeypatch.setattr(_cli, "require_gpu", lambda prog: None)
    monkeypatch.setattr(_device, "device_limits", lambda device: h100)
    handed = {}

    class Pool:  # in-process stand-in for the spawned workers: records what each run would compile
        def __init__(self, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def map(self, fn, chunks):
            handed.setdefault("runs", []).append([i for chunk in chunks for i in chunk])
            return [len(chunk) for chunk in chunks]

    monkeypatch.setattr(precompile, "ProcessPoolExecutor", Pool)
    precompile.main(["--jobs", "3", "--dtypes", "bfloat16", "--kinds", "fwd"])
    precompile.main(["--jobs", "3", "--dtypes", "bfloat16"])
    only_fwd, every = handed["runs"]
    assert only_fwd and {i[0] for i in only_fwd} == {"fwd"}
    assert sorted(map(str, only_fwd)) == sorted(str(i) for i in every if i[0] == "fwd")
    assert {i[0] for i in every} == {"fwd", "bwd", "bwd_dq"}
    assert "kernel instances ready" in capsys.readouterr().out
