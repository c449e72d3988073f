# Cohort stages: generate the synthetic cohort (when configured) and choose each patient's series.


if SYNTHETIC:

    rule synth:
        output:
            sheet=SAMPLE_SHEET,
        log:
            f"{RESULTS}/logs/synth.log",
        benchmark:
            f"{RESULTS}/benchmarks/synth.tsv"
        conda:
            "../../envs/cohort.yaml"
        threads: 1
        resources:
            mem_mb=4000,
            runtime=60,
        params:
            cfg=sections("synthetic"),
            out_dir=lambda wc, output: Path(output.sheet).parent,
        shell:
            "python -m lungfusion --params {params.cfg:q} synth --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule index:
    input:
        sheet=SAMPLE_SHEET,
    output:
        series=f"{RESULTS}/ingest/series.tsv",
    log:
        f"{RESULTS}/logs/index.log",
    benchmark:
        f"{RESULTS}/benchmarks/index.tsv"
    conda:
        "../../envs/cohort.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        cfg=sections("cohort", "ingest"),
        dicom_root=DICOM_ROOT,
    shell:
        "python -m lungfusion --params {params.cfg:q} index --dicom-root {params.dicom_root:q}"
        " --sample-sheet {input.sheet:q} --out {output.series:q} > {log:q} 2>&1"
