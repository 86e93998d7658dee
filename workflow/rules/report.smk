rule aggregate:
    input:
        student_metrics,
        teachers=expand(f"{TEACHER}/metrics.json", dataset=cfg["datasets"]),
    output:
        summary=report(f"{R}/tables/summary.csv", caption="../report/summary.rst", category="Tables"),
        summary_md=f"{R}/tables/summary.md",
        accuracy=report(f"{R}/figures/accuracy.png", caption="../report/accuracy.rst", category="Figures"),
        curves=report(f"{R}/figures/curves.png", caption="../report/curves.rst", category="Figures"),
    log:
        f"{R}/logs/aggregate.log",
    localrule: True
    conda:
        "../../environment.yml"
    shell:
        "python -m ev3 aggregate $(dirname $(dirname {output.summary})) > {log} 2>&1"
