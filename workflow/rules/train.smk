# Cross-validation splits and training, one job per model and fold.


rule splits:
    input:
        sheet=SAMPLE_SHEET,
        rois=per_patient("{results}/roi/{pid}.json"),
    output:
        folds=f"{RESULTS}/splits/folds.tsv",
    params:
        cfg=sections("cohort", "splits"),
        roi_dir=f"{RESULTS}/roi",
    log:
        f"{RESULTS}/logs/splits.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../../envs/train.yaml"
    shell:
        "{LUNGFUSION} --params {params.cfg:q} splits --sample-sheet {input.sheet:q}"
        " --roi-dir {params.roi_dir:q} --out {output.folds:q} > {log:q} 2>&1"
