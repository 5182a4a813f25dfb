"""What the source-editing probes in this folder share: each experiment runs in its own process with the kernel
source edited before compiling (``edit(text, experiment)`` on every translation unit cupyflash loads), compiled in
parallel first (CuPy's disk cache keeps the binaries), then timed one process at a time, round after round.

A probe script calls ``run(__file__, EXPERIMENTS, edit, child, rounds)``: with no arguments it starts the
processes; a process it starts calls ``child(experiment, timing)`` with the source already edited."""
import os
import subprocess
import sys


def run(script, experiments, edit, child, rounds=2):
    if len(sys.argv) > 1:  # a child: edit the sources this process will compile, then measure
        from cupyflash import _kernels

        original = _kernels.load_source
        _kernels.load_source = lambda name: edit(original(name), sys.argv[1])
        child(sys.argv[1], sys.argv[2] == "time")
        return
    env = dict(os.environ, CUPY_CACHE_DIR=os.environ.get("CUPY_CACHE_DIR", ".cupy_cache"))
    start = lambda e, mode: subprocess.Popen([sys.executable, script, e, mode], env=env)  # noqa: E731
    for p in [start(e, "compile") for e in experiments]:
        p.wait()
    for _ in range(rounds):
        for e in experiments:
            start(e, "time").wait()
