rule teacher_run_config:
    output:
        f"{TEACHER}/run.json",
    params:
        run=lambda wc: teacher_run(cfg, wc.dataset, wc.teacher),
    log:
        f"{R}/logs/run_config/teacher/{{dataset}}/{{teacher}}.log",
    localrule: True
    run:
        from ev3.io import write_json

        write_json(output[0], params.run)


# Trains the teacher, or (config teacher.checkpoint) imports and evaluates a given checkpoint. `exec`: as for the
# students (distill.smk), a SIGTERM reaches the training process with no shell in between.
rule train_teacher:
    input:
        run=f"{TEACHER}/run.json",
        data=paths.data_dir("{dataset}", root=R),
    output:
        metrics=f"{TEACHER}/metrics.json",
        predictions=f"{TEACHER}/predictions.npz",
        checkpoint=directory(f"{TEACHER}/checkpoint"),
    params:
        state=lambda wc: state_dir(TEACHER, wc),
    log:
        f"{R}/logs/teacher/{{dataset}}/{{teacher}}.log",
    threads: cfg["threads"]
    resources:
        **GPU,
    conda:
        CONDA_ENV
    shell:
        "exec python -m ev3 train {input.run} --out $(dirname {output.metrics}) --state-dir {params.state}"
        + f" --threads {{threads}} --compile-cache {COMPILE_CACHE} > {{log}} 2>&1"
