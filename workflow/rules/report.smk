from ev3.report import OPTIONAL_FIGURES

# Every table and figure goes into the HTML report with its caption from workflow/report/<name>.rst. The
# OPTIONAL_FIGURES are drawn only for some method types, so they are outputs only when the config has one.
METHOD_TYPES = {options["type"] for options in cfg["methods"].values()}
# At many runs (config `report`): `aggregate` leaves the submitting host for a cluster job, figures draw a sample
# of runs per method, and the one-row-per-run table stays out of the HTML report (the per-method tables are in).
REPORT = cfg.get("report") or {}
N_RUNS = len(student_metrics())
LOCAL_MAX_RUNS = REPORT.get("local_max_runs", 500)
SAMPLE_RUNS = REPORT.get("sample_runs", 20)
EMBED_MAX_RUNS = REPORT.get("embed_max_runs", 500)
TABLES = ["summary", "significance", "compute", "matched_compute", "fidelity", "ev3"]  # each also as .md
REPORT_TABLES = {
    name: report(f"{R}/tables/{name}.csv", caption=f"../report/{name}.rst", category="Tables")
    for name in TABLES + (["runs"] if N_RUNS <= EMBED_MAX_RUNS else [])
}
if N_RUNS > EMBED_MAX_RUNS:
    REPORT_TABLES["runs"] = f"{R}/tables/runs.csv"
REPORT_FIGURES = {
    name: report(f"{R}/figures/{name}.png", caption=f"../report/{name}.rst", category="Figures")
    for name in ["accuracy", "curves", "accuracy_vs_flops", "agreement"]
    + [name for name, method_type in OPTIONAL_FIGURES.items() if method_type in METHOD_TYPES]
}


rule resolved_config:
    output:
        report(f"{R}/config.yaml", caption="../report/config.rst", category="Configuration"),
    params:
        config=cfg,
    log:
        f"{R}/logs/resolved_config.log",
    localrule: True
    run:
        import yaml

        from ev3.io import write_text

        write_text(output[0], yaml.safe_dump(params.config, sort_keys=True, allow_unicode=True))


rule aggregate:
    input:
        student_metrics,
        predictions=lambda wc: [p.replace("metrics.json", "predictions.npz") for p in student_metrics()],
        teachers=teacher_metrics,
        config=f"{R}/config.yaml",
    output:
        **REPORT_TABLES,
        **REPORT_FIGURES,
        markdown=expand(f"{R}/tables/{{name}}.md", name=TABLES),
        page=f"{R}/tables/report.rst",
    params:
        sample_runs=SAMPLE_RUNS,
    log:
        f"{R}/logs/aggregate.log",
    localrule: N_RUNS <= LOCAL_MAX_RUNS
    conda:
        CONDA_ENV
    shell:
        "python -m ev3 aggregate $(dirname $(dirname {output.summary})) --sample-runs {params.sample_runs} > {log} 2>&1"
