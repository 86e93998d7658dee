"""Per-job CPU pinning: concurrent one-thread jobs get different cores; a job that cannot get free cores,
or needs them all, is not pinned; a dead job's cores are free again."""

import os
import subprocess
import sys

CLAIM = """
import os, sys, time
from ev3.cores import claim
os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:2])  # a 2-core job slot set, as on the CI machine
cores, locks = claim(int(sys.argv[2]), sys.argv[1])
print(cores, sorted(os.sched_getaffinity(0)), flush=True)
time.sleep(float(sys.argv[3]))
"""


def _start(lock_dir, threads, hold):
    return subprocess.Popen([sys.executable, "-c", CLAIM, str(lock_dir), str(threads), str(hold)],
                            stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _line(proc):
    cores, _, affinity = proc.stdout.readline().strip().partition("] ")
    return eval(cores + "]"), eval(affinity)


def test_concurrent_jobs_are_pinned_to_different_free_cores(tmp_path):
    assert len(os.sched_getaffinity(0)) >= 2, "this test needs 2 cores"
    a = _start(tmp_path, 1, 30)
    cores_a, affinity_a = _line(a)
    b = _start(tmp_path, 1, 30)
    cores_b, affinity_b = _line(b)
    assert len(cores_a) == len(cores_b) == 1 and cores_a != cores_b
    assert affinity_a == cores_a and affinity_b == cores_b  # really pinned
    c = _start(tmp_path, 1, 0)
    cores_c, affinity_c = _line(c)
    assert cores_c == [] and len(affinity_c) == 2  # no free core: not pinned
    a.kill()
    a.wait()
    d = _start(tmp_path, 1, 0)
    assert _line(d)[0] == cores_a  # a killed job's core is free again
    b.kill()
    b.wait()
    for p in (c, d):
        p.wait()


def test_a_job_that_needs_every_core_is_not_pinned(tmp_path):
    p = _start(tmp_path, 2, 0)
    cores, affinity = _line(p)
    p.wait()
    assert cores == [] and len(affinity) == 2
    assert not os.listdir(tmp_path) or all(name.startswith("core") for name in os.listdir(tmp_path))
