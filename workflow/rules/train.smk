# Cross-validation splits and training, one job per model and fold.

from lungfusion.estimators import LESION_FEATURE_MODELS


rule splits:
    input:
        sheet=SAMPLE_SHEET,
        series=f"{RESULTS}/ingest/series.tsv",
        rois=per_patient("{results}/roi/{pid}.json"),
    output:
        folds=f"{RESULTS}/splits/folds.tsv",
        cohort=f"{RESULTS}/splits/cohort.tsv",
    log:
        f"{RESULTS}/logs/splits.log",
    benchmark:
        f"{RESULTS}/benchmarks/splits.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        cfg=sections("task", "cohort", "splits"),
        roi_dir=lambda wc, input: Path(input.rois[0]).parent,
    shell:
        "python -m lungfusion --params {params.cfg:q} splits --sample-sheet {input.sheet:q}"
        " --roi-dir {params.roi_dir:q} --out {output.folds:q} > {log:q} 2>&1"


# results/train/sfsa/fold{k}/ is written by the search, not by plain training, and
# results/train/{radiomics,semantic}/fold{k}/ from the lesion features, not from the ROI tensors.
ruleorder: sfsa > train
ruleorder: train_radiomics > train


rule train:
    input:
        unpack(aux_targets_input),
        folds=f"{RESULTS}/splits/folds.tsv",
        sheet=SAMPLE_SHEET,
        rois=per_patient("{results}/roi/{pid}.json"),
        encoders=pretrain_encoders,
    output:
        done=f"{RESULTS}/train/{{model}}/fold{{fold}}/summary.json",
    log:
        f"{RESULTS}/logs/train/{{model}}/fold{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{model}}/fold{{fold}}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=1,
    params:
        cfg=train_params,
        roi_dir=lambda wc, input: Path(input.rois[0]).parent,
        out_dir=lambda wc, output: Path(output.done).parent,
        aux=radiomics_features_option,
        pretrain=pretrain_option,
    shell:
        "python -m lungfusion --params {params.cfg:q} train --model {wildcards.model} --fold {wildcards.fold}"
        " --folds {input.folds:q} --roi-dir {params.roi_dir:q} --sample-sheet {input.sheet:q}"
        " --out-dir {params.out_dir:q} {params.aux} {params.pretrain} --no-progress > {log:q} 2>&1"


rule sfsa:
    input:
        folds=f"{RESULTS}/splits/folds.tsv",
        sheet=SAMPLE_SHEET,
        rois=per_patient("{results}/roi/{pid}.json"),
        encoders=pretrain_encoders,
    output:
        best=f"{RESULTS}/sfsa/fold{{fold}}/best.json",
        done=f"{RESULTS}/train/sfsa/fold{{fold}}/summary.json",
    log:
        f"{RESULTS}/logs/sfsa/fold{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/sfsa/fold{{fold}}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=720,
        gpu=1,
    params:
        cfg=sfsa_params,
        roi_dir=lambda wc, input: Path(input.rois[0]).parent,
        out_dir=lambda wc, output: Path(output.best).parent,
        train_out_dir=lambda wc, output: Path(output.done).parent,
        pretrain=pretrain_option,
    shell:
        "python -m lungfusion --params {params.cfg:q} sfsa --fold {wildcards.fold}"
        " --folds {input.folds:q} --roi-dir {params.roi_dir:q} --sample-sheet {input.sheet:q}"
        " --out-dir {params.out_dir:q} --train-out-dir {params.train_out_dir:q} {params.pretrain}"
        " --no-progress > {log:q} 2>&1"


rule train_radiomics:
    input:
        folds=f"{RESULTS}/splits/folds.tsv",
        sheet=SAMPLE_SHEET,
        features=f"{RESULTS}/radiomics/features.tsv",
    output:
        done=f"{RESULTS}/train/{{model}}/fold{{fold}}/summary.json",
    log:
        f"{RESULTS}/logs/train/{{model}}/fold{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{model}}/fold{{fold}}.tsv"
    wildcard_constraints:
        model="|".join(LESION_FEATURE_MODELS),
    conda:
        "../../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        cfg=table_model_params,
        roi_dir=f"{RESULTS}/roi",
        out_dir=lambda wc, output: Path(output.done).parent,
    shell:
        "python -m lungfusion --params {params.cfg:q} train --model {wildcards.model}"
        " --fold {wildcards.fold}"
        " --folds {input.folds:q} --roi-dir {params.roi_dir:q} --sample-sheet {input.sheet:q}"
        " --radiomics-features {input.features:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"
