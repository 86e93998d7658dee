# Student training: one job per seed group (config seeds_per_job; seed s is in group s // S) of one dataset,
# student and method. The job writes each run's run.json, metrics.json and predictions.npz in the run's own
# directory (`python -m ev3 train-group`). The resolved run config is a param, so a changed method, model or
# recipe reruns exactly the runs it changes (Snakemake's params rerun trigger); a group extended by a new seed
# reruns that group's job, which restores its finished runs from their records instead of training them.
# `exec`: the job's shell becomes the training process, so a scheduler's SIGTERM (time limit, preemption) reaches
# it with no shell in between that would die first and end the job before the training checkpoints (ev3.stop).
GROUP_MODE = seeds_per_job(cfg)["mode"]
GROUP_SHELL = (
    "exec python -m ev3 train-group --run {params.run:q} --seeds {params.seeds} --mode " + GROUP_MODE
    + f" --threads {{threads}} --compile-cache {COMPILE_CACHE} > {{log}} 2>&1"
)


if seeds_per_job(cfg)["count"] == 1:

    rule train_student:
        input:
            data=paths.data_dir("{dataset}", root=R),
            teacher=TEACHER_CHECKPOINT,
        output:
            run=f"{RUN}/run.json",
            metrics=f"{RUN}/metrics.json",
            predictions=f"{RUN}/predictions.npz",
        params:
            run=lambda wc: group_run_of(wc.dataset, wc.student, wc.method),
            seeds="{seed}",  # the run's seed (a wildcard; strings in params are formatted with them)
        log:
            f"{R}/logs/{os.path.relpath(RUN, R)}.log",
        threads: cfg["threads"]
        resources:
            **GPU,
        conda:
            CONDA_ENV
        shell:
            GROUP_SHELL

else:
    # One rule per seed group (a rule's outputs are fixed patterns, and a group's seeds are part of them), named
    # train_student_g<s // S>; each takes the threads and resources set for train_student (e.g. in a profile).
    for group in seed_groups(cfg):
        name = group_rule(cfg, group)

        rule:
            name:
                name
            input:
                data=paths.data_dir("{dataset}", root=R),
                teacher=TEACHER_CHECKPOINT,
            output:
                run=expand(f"{RUN}/run.json", seed=group, allow_missing=True),
                metrics=expand(f"{RUN}/metrics.json", seed=group, allow_missing=True),
                predictions=expand(f"{RUN}/predictions.npz", seed=group, allow_missing=True),
            params:
                run=lambda wc: group_run_of(wc.dataset, wc.student, wc.method),
                seeds=" ".join(map(str, group)),
            log:
                f"{R}/logs/{os.path.relpath(os.path.dirname(RUN), R)}/{name}.log",
            threads: cfg["threads"]
            resources:
                **GPU,
            conda:
                CONDA_ENV
            shell:
                GROUP_SHELL
