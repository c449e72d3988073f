# External validation (evaluate.external): the imaging stages on a second collection under
# results/external/ (the same commands and config sections as the internal patients, so an ID
# shared with the internal cohort cannot clash), then every trained model and the late-fusion
# integrator score it. Its patients never reach a fit.


use rule index as external_index with:
    input:
        sheet=EXTERNAL["sample_sheet"],
    output:
        series=f"{EXT}/ingest/series.tsv",
    log:
        f"{EXT}/logs/index.log",
    benchmark:
        f"{EXT}/benchmarks/index.tsv"
    params:
        cfg=sections("cohort", "ingest", cohort=EXTERNAL_COHORT),
        dicom_root=EXTERNAL["dicom_root"],


use rule ingest as external_ingest with:
    input:
        series=ancient(f"{EXT}/ingest/series.tsv"),
    output:
        done=f"{EXT}/ingest/{{pid}}/ingest.json",
    log:
        f"{EXT}/logs/ingest/{{pid}}.log",
    benchmark:
        f"{EXT}/benchmarks/ingest/{{pid}}.tsv"


use rule register as external_register with:
    input:
        ingest=f"{EXT}/ingest/{{pid}}/ingest.json",
    output:
        done=f"{EXT}/register/{{pid}}/register.json",
    log:
        f"{EXT}/logs/register/{{pid}}.log",
    benchmark:
        f"{EXT}/benchmarks/register/{{pid}}.tsv"
    params:
        cfg=sections("register"),
        ingest_dir=lambda wc: f"{EXT}/ingest/{wc.pid}",
        out_dir=lambda wc, output: Path(output.done).parent,


use rule segment as external_segment with:
    input:
        register=f"{EXT}/register/{{pid}}/register.json",
    output:
        done=f"{EXT}/segment/{{pid}}/segment.json",
    log:
        f"{EXT}/logs/segment/{{pid}}.log",
    benchmark:
        f"{EXT}/benchmarks/segment/{{pid}}.tsv"
    params:
        cfg=sections("segment"),
        register_dir=lambda wc: f"{EXT}/register/{wc.pid}",
        out_dir=lambda wc, output: Path(output.done).parent,


use rule roi as external_roi with:
    input:
        ingest=f"{EXT}/ingest/{{pid}}/ingest.json",
        register=f"{EXT}/register/{{pid}}/register.json",
        segment=f"{EXT}/segment/{{pid}}/segment.json",
    output:
        done=f"{EXT}/roi/{{pid}}.json",
    log:
        f"{EXT}/logs/roi/{{pid}}.log",
    benchmark:
        f"{EXT}/benchmarks/roi/{{pid}}.tsv"
    params:
        cfg=sections("roi"),
        ingest_dir=lambda wc: f"{EXT}/ingest/{wc.pid}",
        register_dir=lambda wc: f"{EXT}/register/{wc.pid}",
        segment_dir=lambda wc: f"{EXT}/segment/{wc.pid}",
        npz=lambda wc, output: Path(output.done).with_suffix(".npz"),


use rule radiomics as external_radiomics with:
    input:
        sheet=EXTERNAL["sample_sheet"],
        rois=external_per_patient("{ext}/roi/{pid}.json"),
        segments=external_per_patient("{ext}/segment/{pid}/segment.json"),
    output:
        features=f"{EXT}/radiomics/features.tsv",
    log:
        f"{EXT}/logs/radiomics.log",
    benchmark:
        f"{EXT}/benchmarks/radiomics.tsv"
    params:
        cfg=sections("cohort", "roi", "radiomics", cohort=EXTERNAL_COHORT),
        roi_dir=lambda wc, input: Path(input.rois[0]).parent,
        segment_dir=lambda wc, input: Path(input.segments[0]).parents[1],
        register_dir=f"{EXT}/register",


rule external:
    input:
        sheet=EXTERNAL["sample_sheet"],
        rois=external_per_patient("{ext}/roi/{pid}.json"),
        features=f"{EXT}/radiomics/features.tsv",
        models=fold_outputs(MODELS),
        integrator=f"{RESULTS}/integrate/{INTEGRATOR}/summary.json",
        integrators=expand(
            f"{RESULTS}/integrate/{INTEGRATOR}/fold{{fold}}/model.joblib", fold=FOLDS
        ),
    output:
        predictions=f"{EXT}/predictions/summary.json",
        table=f"{EXT}/metrics/all.tsv",
        done=f"{EXT}/metrics/summary.json",
    log:
        f"{EXT}/logs/external.log",
    benchmark:
        f"{EXT}/benchmarks/external.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        cfg=sections(
            "task",
            "cohort",
            "train",
            "roi",
            "radiomics",
            "integrate",
            "evaluate",
            cohort=EXTERNAL_COHORT,
        ),
        # results/train/{model}/fold{k}/summary.json -> results/train, and so on
        train_dir=lambda wc, input: Path(input.models[0]).parents[2],
        integrator_dir=lambda wc, input: Path(input.integrator).parent,
        roi_dir=lambda wc, input: Path(input.rois[0]).parent,
        out_dir=lambda wc, output: Path(output.predictions).parents[1],
        models=MODELS,
    shell:
        "python -m lungfusion --params {params.cfg:q} external --train-dir {params.train_dir:q}"
        " --integrator-dir {params.integrator_dir:q} --roi-dir {params.roi_dir:q}"
        " --features {input.features:q} --sample-sheet {input.sheet:q} --models {params.models}"
        " --out-dir {params.out_dir:q} > {log:q} 2>&1"
