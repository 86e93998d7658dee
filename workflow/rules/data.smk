# The data job of each dataset. Embedded datasets are built offline into results/; TFDS datasets must be
# prepared beforehand under config data_dir (README), and the job only checks that they are, failing at once
# with the command to prepare them (never a download).
rule prepare_data:
    output:
        directory(paths.data_dir("{dataset}", root=R)),
    wildcard_constraints:
        dataset="|".join(EMBEDDED),
    log:
        f"{R}/logs/prepare_data/{{dataset}}.log",
    conda:
        CONDA_ENV
    shell:
        "python -m ev3 prepare-data {wildcards.dataset} --data-dir {output} > {log} 2>&1"


rule check_data:
    output:
        directory(paths.data_dir("{dataset}", root=R)),
    wildcard_constraints:
        dataset="|".join(TFDS_IMAGES),
    params:
        data_dir=lambda wc: dataset_dir(cfg, wc.dataset),
    log:
        f"{R}/logs/check_data/{{dataset}}.log",
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "python -m ev3 check-data {wildcards.dataset} --data-dir {params.data_dir} --marker {output} 2>&1 | tee {log}"
