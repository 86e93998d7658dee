# Path helpers only: which runs exist and where their files live.
from ev3.config import student_run, student_runs, teacher_run


def student_metrics(wildcards=None):
    return [
        f"{R}/runs/{r['dataset']}/{r['student']}/{r['method']}/seed{r['seed']}/metrics.json"
        for r in student_runs(cfg)
    ]


wildcard_constraints:
    dataset="[A-Za-z0-9_]+",
    student="[A-Za-z0-9_.-]+",
    method="[A-Za-z0-9_-]+",
    seed=r"-?\d+",
