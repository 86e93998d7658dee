rule prepare_data:
    output:
        directory(f"{R}/data/{{dataset}}"),
    log:
        f"{R}/logs/prepare_data/{{dataset}}.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m ev3 prepare-data {wildcards.dataset} --data-dir {output} > {log} 2>&1"
