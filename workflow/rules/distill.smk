rule student_run_config:
    output:
        f"{RUN}/run.json",
    params:
        run=lambda wc: student_run(cfg, wc.dataset, wc.student, wc.method, int(wc.seed)),
    log:
        f"{R}/logs/run_config/{os.path.relpath(RUN, R)}.log",
    localrule: True
    run:
        from ev3.io import write_json

        write_json(output[0], params.run)


rule train_student:
    input:
        run=f"{RUN}/run.json",
        data=paths.data_dir("{dataset}", root=R),
        teacher=teacher_checkpoint_of,
    output:
        metrics=f"{RUN}/metrics.json",
        predictions=f"{RUN}/predictions.npz",
    params:
        state=lambda wc: state_dir(RUN, wc),
    log:
        f"{R}/logs/{os.path.relpath(RUN, R)}.log",
    threads: cfg["threads"]
    resources:
        **GPU,
    conda:
        "../../environment.yml"
    shell:
        "python -m ev3 train {input.run} --out $(dirname {output.metrics}) --state-dir {params.state}"
        + f" --threads {{threads}} --compile-cache {COMPILE_CACHE} > {{log}} 2>&1"
