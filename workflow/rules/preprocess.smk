# Per-patient imaging stages. Each writes its images first and its JSON sidecar last; the
# sidecar is the tracked output, so a killed job never looks complete. A patient with bad input
# gets status "failed" in its sidecar and the others go on.


rule ingest:
    input:
        # ancient: re-indexing (e.g. a patient added to the sheet) must not redo every patient;
        # after changing a patient's series choice, rerun it with -R ingest.
        series=ancient(f"{RESULTS}/ingest/series.tsv"),
    output:
        done=f"{RESULTS}/ingest/{{pid}}/ingest.json",
    log:
        f"{RESULTS}/logs/ingest/{{pid}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/ingest/{{pid}}.tsv"
    conda:
        "../../envs/cohort.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=20,
    params:
        cfg=sections("ingest"),
        out_dir=lambda wc, output: Path(output.done).parent,
    shell:
        "python -m lungfusion --params {params.cfg:q} ingest --patient {wildcards.pid:q}"
        " --series {input.series:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule register:
    input:
        ingest=f"{RESULTS}/ingest/{{pid}}/ingest.json",
    output:
        done=f"{RESULTS}/register/{{pid}}/register.json",
    log:
        f"{RESULTS}/logs/register/{{pid}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/register/{{pid}}.tsv"
    conda:
        "../../envs/imaging.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        cfg=sections("register"),
        ingest_dir=lambda wc: f"{RESULTS}/ingest/{wc.pid}",
        out_dir=lambda wc, output: Path(output.done).parent,
    shell:
        "python -m lungfusion --params {params.cfg:q} register --patient {wildcards.pid:q}"
        " --ingest-dir {params.ingest_dir:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule segment:
    input:
        register=f"{RESULTS}/register/{{pid}}/register.json",
    output:
        done=f"{RESULTS}/segment/{{pid}}/segment.json",
    log:
        f"{RESULTS}/logs/segment/{{pid}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/segment/{{pid}}.tsv"
    conda:
        "../../envs/imaging.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=20,
    params:
        cfg=sections("segment"),
        register_dir=lambda wc: f"{RESULTS}/register/{wc.pid}",
        out_dir=lambda wc, output: Path(output.done).parent,
    shell:
        "python -m lungfusion --params {params.cfg:q} segment --patient {wildcards.pid:q}"
        " --register-dir {params.register_dir:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule roi:
    input:
        ingest=f"{RESULTS}/ingest/{{pid}}/ingest.json",
        register=f"{RESULTS}/register/{{pid}}/register.json",
        segment=f"{RESULTS}/segment/{{pid}}/segment.json",
    output:
        done=f"{RESULTS}/roi/{{pid}}.json",
    log:
        f"{RESULTS}/logs/roi/{{pid}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/roi/{{pid}}.tsv"
    conda:
        "../../envs/imaging.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        cfg=sections("roi"),
        ingest_dir=lambda wc: f"{RESULTS}/ingest/{wc.pid}",
        register_dir=lambda wc: f"{RESULTS}/register/{wc.pid}",
        segment_dir=lambda wc: f"{RESULTS}/segment/{wc.pid}",
        npz=lambda wc, output: Path(output.done).with_suffix(".npz"),
    shell:
        "python -m lungfusion --params {params.cfg:q} roi --patient {wildcards.pid:q}"
        " --ingest-dir {params.ingest_dir:q} --register-dir {params.register_dir:q}"
        " --segment-dir {params.segment_dir:q} --out {params.npz:q} > {log:q} 2>&1"


rule radiomics:
    input:
        sheet=SAMPLE_SHEET,
        rois=per_patient("{results}/roi/{pid}.json"),
        segments=per_patient("{results}/segment/{pid}/segment.json"),
    output:
        features=f"{RESULTS}/radiomics/features.tsv",
    log:
        f"{RESULTS}/logs/radiomics.log",
    benchmark:
        f"{RESULTS}/benchmarks/radiomics.tsv"
    conda:
        "../../envs/imaging.yaml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        cfg=sections("cohort", "roi", "radiomics"),
        roi_dir=lambda wc, input: Path(input.rois[0]).parent,
        segment_dir=lambda wc, input: Path(input.segments[0]).parents[1],
        register_dir=f"{RESULTS}/register",
    shell:
        "python -m lungfusion --params {params.cfg:q} radiomics --sample-sheet {input.sheet:q}"
        " --roi-dir {params.roi_dir:q} --segment-dir {params.segment_dir:q}"
        " --register-dir {params.register_dir:q}"
        " --out {output.features:q} --threads {threads}"
        " > {log:q} 2>&1"
