"""A bare Snakefile with the workflow's jobs, to time what Snakemake itself costs to plan them (the floor).

For a benchmark config it writes the same rules under the same names (data, teacher, the training rule or one
rule per seed group, the resolved config, aggregate, all), each with the same outputs, ``directory()`` flags,
logs and global wildcard constraints, so Snakemake builds the same DAG: the same jobs with the same output
files. What the workflow adds is left out: no config validation or schema, no input functions (inputs are
static patterns and, for the aggregate, a literal list), no params, no resources, no conda, one ``touch`` as
the shell command. ``benchmarks/sweep.py --parts plan`` times ``snakemake -n`` of it beside the workflow's and
checks that both plan the same jobs per rule.

    python benchmarks/bare_snakefile.py CONFIG OUT   # CONFIG: a benchmark config file; OUT: the Snakefile
"""

from __future__ import annotations

import argparse
import os
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ev3 import paths  # noqa: E402
from ev3.config import group_rule, seed_groups, seeds_per_job, student_runs, teacher_models  # noqa: E402
from ev3.data import EMBEDDED, TFDS_IMAGES  # noqa: E402
from ev3.report import OPTIONAL_FIGURES  # noqa: E402

TABLES = ["summary", "significance", "compute", "matched_compute", "fidelity", "ev3"]  # workflow/rules/report.smk
FIGURES = ["accuracy", "curves", "accuracy_vs_flops", "agreement"]
CONSTRAINTS = {"dataset": "[A-Za-z0-9_]+", "student": "[A-Za-z0-9_.-]+", "teacher": "[A-Za-z0-9_.-]+",
               "method": "[A-Za-z0-9_-]+", "seed": r"-?\d+"}  # workflow/rules/common.smk


def _rule(name: str, **fields) -> str:
    lines = [f"rule {name}:"]
    for key, value in fields.items():
        lines.append(f"    {key}:")
        lines += [f"        {item}," for item in (value if isinstance(value, list) else [value])]
    lines.append('    shell:\n        "touch {output}"')
    return "\n".join(lines) + "\n"


def bare_snakefile(config: dict) -> str:
    """The bare Snakefile of ``config`` (a benchmark config; one teacher model for every student)."""
    if isinstance(config["teacher"]["model"], dict):
        raise ValueError("bare_snakefile: one teacher model for every student (teacher.model: a name)")
    R = paths.results_root(config["benchmark"])
    teacher = config["teacher"]["model"]
    run = paths.run_dir("{dataset}", "{student}", "{method}", "{seed}", root=R)
    teacher_dir = paths.teacher_dir("{dataset}", "{teacher}", config["teacher"]["seed"], root=R)
    data = paths.data_dir("{dataset}", root=R)
    checkpoint = os.path.join(paths.teacher_dir("{dataset}", teacher, config["teacher"]["seed"], root=R), "checkpoint")
    methods = {options["type"] for options in config["methods"].values()}
    figures = FIGURES + [name for name, method_type in OPTIONAL_FIGURES.items() if method_type in methods]
    runs = [paths.run_dir(**r, root=R) for r in student_runs(config)]
    teachers = [os.path.join(paths.teacher_dir(d, t, config["teacher"]["seed"], root=R), "metrics.json")
                for d in config["datasets"] for t in teacher_models(config)]

    text = ["wildcard_constraints:\n" + "".join(f"    {k}={v!r},\n" for k, v in CONSTRAINTS.items())]
    text.append(_rule("all", input=[repr(f"{R}/tables/summary.csv"), repr(f"{R}/figures/accuracy.png"),
                                    repr(f"{R}/figures/curves.png")]))
    for name, datasets in (("prepare_data", EMBEDDED), ("check_data", tuple(TFDS_IMAGES))):
        text.append(_rule(name, output=f"directory({data!r})", wildcard_constraints=f"dataset={'|'.join(datasets)!r}",
                          log=repr(f"{R}/logs/{name}/{{dataset}}.log")))
    text.append(_rule("teacher_run_config", output=repr(f"{teacher_dir}/run.json"),
                      log=repr(f"{R}/logs/run_config/teacher/{{dataset}}/{{teacher}}.log")))
    teacher_files = {"metrics": "metrics.json", "predictions": "predictions.npz"}
    text.append(_rule("train_teacher", input=[f"run={teacher_dir + '/run.json'!r}", f"data={data!r}"],
                      output=[f"{k}={teacher_dir + '/' + f!r}" for k, f in teacher_files.items()]
                      + [f"checkpoint=directory({teacher_dir + '/checkpoint'!r})"],
                      log=repr(f"{R}/logs/teacher/{{dataset}}/{{teacher}}.log")))
    inputs = [f"data={data!r}", f"teacher={checkpoint!r}"]
    run_files = {"run": "run.json", "metrics": "metrics.json", "predictions": "predictions.npz"}
    if seeds_per_job(config)["count"] == 1:
        text.append(_rule("train_student", input=inputs, output=[f"{k}={run + '/' + f!r}" for k, f in run_files.items()],
                          log=repr(f"{run.replace(R, R + '/logs', 1)}.log")))
    else:
        for group in seed_groups(config):
            name = group_rule(config, group)
            outputs = [f"{k}={[run.replace('{seed}', str(s)) + '/' + f for s in group]!r}" for k, f in run_files.items()]
            log = os.path.join(os.path.dirname(run).replace(R, R + "/logs", 1), f"{name}.log")
            text.append(_rule(name, input=inputs, output=outputs, log=repr(log)))
    text.append(_rule("resolved_config", output=repr(f"{R}/config.yaml"), log=repr(f"{R}/logs/resolved_config.log")))
    text.append("RUNS = " + repr(runs) + "\n")
    tables = TABLES + ["runs"]
    text.append(_rule(
        "aggregate",
        input=['[r + "/metrics.json" for r in RUNS]', 'predictions=[r + "/predictions.npz" for r in RUNS]',
               f"teachers={teachers!r}", f"config={R + '/config.yaml'!r}"],
        output=[f"{t}={R + '/tables/' + t + '.csv'!r}" for t in tables]
        + [f"{f}={R + '/figures/' + f + '.png'!r}" for f in figures]
        + [f"markdown={[f'{R}/tables/{t}.md' for t in TABLES]!r}", f"page={R + '/tables/report.rst'!r}"],
        log=repr(f"{R}/logs/aggregate.log")))
    return "\n\n".join(text)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("out")
    args = p.parse_args(argv)
    with open(args.config) as f:
        config = yaml.safe_load(f)
    with open(args.out, "w") as f:
        f.write(bare_snakefile(config))


if __name__ == "__main__":
    main()
