# Test-time robustness (a misaligned or withheld PET) of the CT+PET networks and, with PET
# withheld, of the late-fusion integrator; saliency of the networks (both off by default).


rule robustness:
    input:
        models=fold_outputs(config["train"]["models"]),
        folds=f"{RESULTS}/splits/folds.tsv",
        rois=per_patient("{results}/roi/{pid}.json"),
        registers=per_patient("{results}/register/{pid}/register.json"),
        segments=per_patient("{results}/segment/{pid}/segment.json"),
        # the integrator's fold models score the withheld-PET levels with its no-PET pattern
        integrator=f"{RESULTS}/integrate/{INTEGRATOR}/summary.json",
        integrator_models=expand(
            f"{RESULTS}/integrate/{INTEGRATOR}/fold{{fold}}/model.joblib", fold=FOLDS
        ),
    output:
        scores=f"{RESULTS}/robustness/scores.tsv",
        summary=f"{RESULTS}/robustness/summary.tsv",
    log:
        f"{RESULTS}/logs/robustness.log",
    benchmark:
        f"{RESULTS}/benchmarks/robustness.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        mem_mb=6000,
        runtime=120,
        gpu=1,
    params:
        cfg=sections("task", "cohort", "train", "roi", "evaluate", "robustness"),
        models=config["train"]["models"],
        # results/train/{model}/fold{k}/summary.json -> results/train, and so on
        train_dir=lambda wc, input: Path(input.models[0]).parents[2],
        roi_dir=lambda wc, input: Path(input.rois[0]).parent,
        register_dir=lambda wc, input: Path(input.registers[0]).parents[1],
        segment_dir=lambda wc, input: Path(input.segments[0]).parents[1],
        out_dir=lambda wc, output: Path(output.summary).parent,
        integrator_dir=lambda wc, input: Path(input.integrator).parent,
    shell:
        "python -m lungfusion --params {params.cfg:q} robustness --models {params.models}"
        " --train-dir {params.train_dir:q} --folds {input.folds:q} --roi-dir {params.roi_dir:q}"
        " --register-dir {params.register_dir:q} --segment-dir {params.segment_dir:q}"
        " --integrator-dirs {params.integrator_dir:q}"
        " --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule saliency:
    input:
        models=fold_outputs(config["train"]["models"]),
        folds=f"{RESULTS}/splits/folds.tsv",
        rois=per_patient("{results}/roi/{pid}.json"),
    output:
        summary=f"{RESULTS}/saliency/summary.tsv",
    log:
        f"{RESULTS}/logs/saliency.log",
    benchmark:
        f"{RESULTS}/benchmarks/saliency.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        mem_mb=6000,
        runtime=240,
        gpu=1,
    params:
        cfg=sections("task", "cohort", "train", "roi", "radiomics", "saliency"),
        models=config["train"]["models"],
        train_dir=lambda wc, input: Path(input.models[0]).parents[2],
        roi_dir=lambda wc, input: Path(input.rois[0]).parent,
        out_dir=lambda wc, output: Path(output.summary).parent,
    shell:
        "python -m lungfusion --params {params.cfg:q} saliency --models {params.models}"
        " --train-dir {params.train_dir:q} --folds {input.folds:q} --roi-dir {params.roi_dir:q}"
        " --out-dir {params.out_dir:q} > {log:q} 2>&1"
