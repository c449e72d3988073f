# Label-free pretraining of the CT and PET encoders, one job per modality and fold
# (train.init: pretrain starts every image network's encoders from the fold's).


rule pretrain:
    input:
        unpack(pretrain_descriptors_input),
        folds=f"{RESULTS}/splits/folds.tsv",
        cohort=f"{RESULTS}/splits/cohort.tsv",
        rois=per_patient("{results}/roi/{pid}.json"),
    output:
        encoder=f"{RESULTS}/pretrain/{{modality}}/fold{{fold}}/encoder.pt",
        history=f"{RESULTS}/pretrain/{{modality}}/fold{{fold}}/history.tsv",
        summary=f"{RESULTS}/pretrain/{{modality}}/fold{{fold}}/summary.json",
    log:
        f"{RESULTS}/logs/pretrain/{{modality}}/fold{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain/{{modality}}/fold{{fold}}.tsv"
    wildcard_constraints:
        modality="ct|pet",
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=1,
    params:
        cfg=pretrain_params(),
        roi_dir=lambda wc, input: Path(input.rois[0]).parent,
        out_dir=lambda wc, output: Path(output.encoder).parent,
        features=radiomics_features_option,
    shell:
        "python -m lungfusion --params {params.cfg:q} pretrain --modality {wildcards.modality}"
        " --fold {wildcards.fold} --folds {input.folds:q} --cohort {input.cohort:q}"
        " --roi-dir {params.roi_dir:q} --out-dir {params.out_dir:q} {params.features}"
        " --no-progress > {log:q} 2>&1"
