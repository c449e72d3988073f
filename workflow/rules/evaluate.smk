# Late-fusion integration of the unimodal submodels (seed 003) and evaluation of every model.


rule integrate:
    input:
        folds=f"{RESULTS}/splits/folds.tsv",
        sheet=SAMPLE_SHEET,
        submodels=fold_outputs(config["integrate"]["submodels"]),
    output:
        predictions=f"{RESULTS}/integrate/{{integrator}}/predictions.tsv",
        fold_models=expand(
            f"{RESULTS}/integrate/{{{{integrator}}}}/fold{{fold}}/model.joblib",
            fold=FOLDS,
        ),
        done=f"{RESULTS}/integrate/{{integrator}}/summary.json",
    log:
        f"{RESULTS}/logs/integrate/{{integrator}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/integrate/{{integrator}}.tsv"
    wildcard_constraints:
        integrator="late_logistic|late_cox",
    conda:
        "../../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        cfg=sections("task", "cohort", "integrate"),
        # results/train/{model}/fold{k}/summary.json -> results/train
        train_dir=lambda wc, input: Path(input.submodels[0]).parents[2],
        out_dir=lambda wc, output: Path(output.done).parent,
    shell:
        "python -m lungfusion --params {params.cfg:q} integrate --name {wildcards.integrator}"
        " --train-dir {params.train_dir:q} --folds {input.folds:q} --sample-sheet {input.sheet:q}"
        " --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule evaluate:
    input:
        models=fold_outputs(MODELS),
        integrator=f"{RESULTS}/integrate/{INTEGRATOR}/summary.json",
        cohort=f"{RESULTS}/splits/cohort.tsv",
    output:
        table=f"{RESULTS}/metrics/all.tsv",
        done=f"{RESULTS}/metrics/summary.json",
    log:
        f"{RESULTS}/logs/evaluate.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate.tsv"
    conda:
        "../../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        cfg=sections("task", "cohort", "evaluate", evaluate=EVALUATE_INTERNAL),
        predictions=[f"{m}={RESULTS}/train/{m}" for m in MODELS]
        + [f"{INTEGRATOR}={RESULTS}/integrate/{INTEGRATOR}/predictions.tsv"],
        out_dir=lambda wc, output: Path(output.done).parent,
    shell:
        "python -m lungfusion --params {params.cfg:q} evaluate --predictions {params.predictions:q}"
        " --cohort {input.cohort:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"
