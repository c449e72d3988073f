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


rule train:
    input:
        folds=f"{RESULTS}/splits/folds.tsv",
        sheet=SAMPLE_SHEET,
        rois=per_patient("{results}/roi/{pid}.json"),
    output:
        done=f"{RESULTS}/train/{{model}}/fold{{fold}}/summary.json",
    params:
        cfg=sections("task", "cohort", "train"),
        roi_dir=f"{RESULTS}/roi",
        out_dir=lambda wc: f"{RESULTS}/train/{wc.model}/fold{wc.fold}",
    log:
        f"{RESULTS}/logs/train/{{model}}/fold{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{model}}/fold{{fold}}.tsv"
    wildcard_constraints:
        model="(?!sfsa$)[a-z_]+",
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=1,
    conda:
        "../../envs/train.yaml"
    shell:
        "{LUNGFUSION} --params {params.cfg:q} train --model {wildcards.model} --fold {wildcards.fold}"
        " --folds {input.folds:q} --roi-dir {params.roi_dir:q} --sample-sheet {input.sheet:q}"
        " --out-dir {params.out_dir:q} --no-progress > {log:q} 2>&1"


rule sfsa:
    input:
        folds=f"{RESULTS}/splits/folds.tsv",
        sheet=SAMPLE_SHEET,
        rois=per_patient("{results}/roi/{pid}.json"),
    output:
        best=f"{RESULTS}/sfsa/fold{{fold}}/best.json",
        done=f"{RESULTS}/train/sfsa/fold{{fold}}/summary.json",
    params:
        cfg=sections("task", "cohort", "train"),
        roi_dir=f"{RESULTS}/roi",
        out_dir=lambda wc: f"{RESULTS}/sfsa/fold{wc.fold}",
        train_out_dir=lambda wc: f"{RESULTS}/train/sfsa/fold{wc.fold}",
    log:
        f"{RESULTS}/logs/sfsa/fold{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/sfsa/fold{{fold}}.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=720,
        gpu=1,
    conda:
        "../../envs/train.yaml"
    shell:
        "{LUNGFUSION} --params {params.cfg:q} sfsa --fold {wildcards.fold}"
        " --folds {input.folds:q} --roi-dir {params.roi_dir:q} --sample-sheet {input.sheet:q}"
        " --out-dir {params.out_dir:q} --train-out-dir {params.train_out_dir:q} --no-progress"
        " > {log:q} 2>&1"
