"""``python -m ev3 <command>``: what the workflow rules call; also usable without Snakemake.

Commands: ``prepare-data NAME --data-dir DIR``; ``check-data NAME --data-dir DIR --marker OUT`` (a prepared
TFDS dataset is present: write its description to ``OUT/source.json``; reads only the file system, so it
fails in well under a second offline); ``train RUN_JSON --out DIR [--state-dir DIR] [--threads N]
[--compile-cache DIR] [--gpu-locks DIR] [--gpu-wait S]``; ``train-group --run JSON --seeds S… [--mode M]`` (a
seed group's student runs in one process, outputs in their run directories: ``ev3.run.run_group``; same
options as ``train`` but ``--out``/``--state-dir``); ``aggregate RESULTS_ROOT``; ``validate CONFIG``.
``train`` with the run's device ``gpu`` first claims one GPU for itself (``ev3.devices``: a lock file per GPU in
``--gpu-locks``, default ``results/<benchmark>/state/gpu-locks``; waits up to ``--gpu-wait`` seconds for a free
one) and sets ``CUDA_VISIBLE_DEVICES`` to it, before JAX is imported; not under SLURM, which assigns GPUs.
``--threads`` limits XLA's CPU threads; it is applied before JAX is imported. ``--state-dir`` holds the run's
resume state: an interrupted run rerun with the same command resumes from its last checkpoint there.
``--compile-cache`` is JAX's persistent compilation cache: runs that differ only in seeds or values (same
shapes, same code) load each other's compiled kernels instead of compiling again.
Errors in the user's input (config, missing files, teacher or dataset, divergence) print one ``error:`` line
and exit with status 1; so does a write that fails (``ev3.io.WriteError``: the path, the reason and the free
space of its file system, e.g. a full disk) and a run directory that another live process is training
(``ev3.lock``: ``train`` and ``train-group`` lock each run directory they write, before anything else, and the
message names the holder's pid, host and start time). SIGTERM (a scheduler's time limit or preemption,
``scancel``) makes ``train``/``train-group`` checkpoint the step they are at and exit with status 143 after one
``error:`` line (``ev3.stop``); the same command then resumes there.
"""

from __future__ import annotations

import argparse
import os
import sys


def limit_threads(threads: int) -> None:
    """Keep XLA's CPU backend to ``threads`` threads: 1 → single-threaded Eigen and intra-op pools, so
    ``snakemake --cores N`` can run N one-thread jobs without oversubscribing; more → XLA's default pools."""
    flags = os.environ.get("XLA_FLAGS", "")
    if threads == 1 and "xla_cpu_multi_thread_eigen" not in flags:
        flags += " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    os.environ["XLA_FLAGS"] = flags.strip()


def use_compile_cache(path: str) -> None:
    """JAX's persistent compilation cache in ``path``, for every compiled call (JAX's default skips calls that
    compile in under a second, which here is most of them). Concurrent jobs may share it: JAX writes an entry
    once and treats an unreadable one as a miss."""
    import jax

    jax.config.update("jax_compilation_cache_dir", os.path.abspath(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _user_error(e: Exception) -> bool:
    """Errors reported as one line: bad config or input files, a missing dataset or teacher, divergence, no free
    GPU, a write that failed (a full disk), a run directory held by another process, a stop request (SIGTERM)."""
    from ev3.config import ConfigError
    from ev3.devices import NoFreeDeviceError
    from ev3.io import WriteError, out_of_space
    from ev3.lock import RunLockedError
    from ev3.stop import Stopped

    kinds = (ConfigError, FileNotFoundError, FloatingPointError, ValueError, NoFreeDeviceError, WriteError,
             RunLockedError, Stopped)
    data = sys.modules.get("ev3.data")  # a DatasetMissingError can only come from an imported ev3.data
    return isinstance(e, kinds + ((data.DatasetMissingError,) if data else ())) or out_of_space(e)


def _error_line(e: Exception) -> str:
    from ev3.io import out_of_space, write_failure

    if isinstance(e, OSError) and out_of_space(e):  # a write outside ev3.io (e.g. a dataset's files)
        e = write_failure(e.filename or ".", e)
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return f"error: {'; '.join(lines) or type(e).__name__}"


def run_dirs(specs) -> list[str]:
    """The run directories of a seed group's student runs (``ev3.run.group_dirs``, without importing JAX)."""
    from ev3 import paths

    return [paths.run_dir(s.dataset, s.model_name, s.method, s.seed, root=paths.results_root(s.benchmark))
            for s in specs]


def claim_gpu(spec, lock_root: str | None, timeout_s: float):
    """One GPU for this process per the run's ``device`` and ``gpus`` (``ev3.devices.claim_for_job``); call it
    before JAX is imported. Returns the claim (held until the process ends) or None where claiming is off."""
    from ev3 import devices

    from ev3 import paths

    root = lock_root or paths.gpu_locks(root=paths.results_root(spec.benchmark))
    return devices.claim_for_job(spec.device, spec.gpus, root, timeout_s=timeout_s,
                                 log=lambda line: print(line, flush=True))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ev3", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare-data", help="build an embedded dataset as TFDS array_record")
    prep.add_argument("name")
    prep.add_argument("--data-dir", required=True)
    check = sub.add_parser("check-data", help="check that a TFDS dataset is prepared; write a marker directory")
    check.add_argument("name")
    check.add_argument("--data-dir", required=True)
    check.add_argument("--marker", required=True, help="directory to create with source.json")
    train = sub.add_parser("train", help="run one resolved run config")
    train.add_argument("run_json")
    train.add_argument("--out", required=True)
    train.add_argument("--threads", type=int, default=0, help="XLA CPU threads (0: XLA's default)")
    train.add_argument("--state-dir", default=None, help="checkpoint here and resume from here (removed when done)")
    train.add_argument("--compile-cache", default=None, help="JAX persistent compilation cache directory (shared by runs)")
    train.add_argument("--gpu-locks", default=None,
                       help="device gpu: folder of the per-GPU lock files (default results/<benchmark>/state/gpu-locks)")
    train.add_argument("--gpu-wait", type=float, default=3600.0, help="seconds to wait for a free GPU before failing")
    group = sub.add_parser("train-group", help="train a seed group's student runs in one process (seeds_per_job)")
    group.add_argument("--run", required=True, help="the group's resolved student run config as JSON, without seed")
    group.add_argument("--seeds", type=int, nargs="+", required=True, help="the group's seeds")
    group.add_argument("--mode", choices=["sequential", "vmap"], default="sequential")
    group.add_argument("--threads", type=int, default=0, help="XLA CPU threads (0: XLA's default)")
    group.add_argument("--compile-cache", default=None, help="JAX persistent compilation cache directory (shared by runs)")
    group.add_argument("--gpu-locks", default=None, help="as for train")
    group.add_argument("--gpu-wait", type=float, default=3600.0, help="as for train")
    agg = sub.add_parser("aggregate", help="metrics.json files → tables and figures")
    agg.add_argument("root", help="results/<benchmark>")
    agg.add_argument("--sample-runs", type=int, default=20,
                     help="figures drawing runs one by one draw at most this many per method (median and band beyond)")
    val = sub.add_parser("validate", help="validate a benchmark config file")
    val.add_argument("config")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    held = None
    if args.command in ("train", "train-group"):
        from ev3 import stop

        stop.on_signals()  # SIGTERM: checkpoint the current step, then exit 143 (a rerun resumes)
        # GPU jobs allocate memory as they need it (JAX's default takes 75 % up front), so jobs can share a GPU.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        if args.threads:
            limit_threads(args.threads)

    try:
        if args.command == "prepare-data":
            from ev3.data import prepare

            print(prepare(args.name, args.data_dir))
        elif args.command == "check-data":
            from ev3 import io
            from ev3.data import describe

            source = describe(args.name, args.data_dir)
            os.makedirs(args.marker, exist_ok=True)
            io.write_json(os.path.join(args.marker, "source.json"), source)
            print(f"{args.name}: {source['path']} {source['splits']}")
        elif args.command == "train":
            from ev3 import io, lock
            from ev3.config import RunSpec

            spec = RunSpec.from_dict(io.read_json(args.run_json))
            held = lock.hold([args.out], log=lambda line: print(line, flush=True))  # one writer per run
            gpu = claim_gpu(spec, args.gpu_locks, args.gpu_wait)  # noqa: F841 (held while the run lasts)
            from ev3.run import run  # imports JAX: after the GPU is chosen

            if args.compile_cache:
                use_compile_cache(args.compile_cache)
            run(spec, args.out, state_dir=args.state_dir)
        elif args.command == "train-group":
            import json

            from ev3 import lock
            from ev3.config import RunSpec

            run = json.loads(args.run)
            specs = [RunSpec.from_dict({**run, "seed": seed}) for seed in args.seeds]
            held = lock.hold(run_dirs(specs), log=lambda line: print(line, flush=True))  # one writer per run
            gpu = claim_gpu(specs[0], args.gpu_locks, args.gpu_wait)  # noqa: F841 (held while the runs last)
            from ev3.run import run_group  # imports JAX: after the GPU is chosen

            if args.compile_cache:
                use_compile_cache(args.compile_cache)
            run_group(specs, mode=args.mode)
        elif args.command == "aggregate":
            from ev3.report.aggregate import aggregate

            aggregate(args.root, args.sample_runs)
        elif args.command == "validate":
            import yaml

            from ev3.config import validate

            with open(args.config) as f:
                validate(yaml.safe_load(f))
            print(f"{args.config}: ok")
    except Exception as e:
        if not _user_error(e):
            raise
        print(_error_line(e), file=sys.stderr, flush=True)
        return getattr(e, "exit_status", 1)  # ev3.stop.Stopped: 128 + the signal's number
    finally:
        if held is not None:
            held.release()
    return 0
