# The report: one self-contained HTML page, Markdown, CSV and LaTeX tables, figures.
# Outputs are tagged with report() so `snakemake --report report.html` collects them too.


rule report:
    input:
        metrics=f"{RESULTS}/metrics/all.tsv",
        evaluated=f"{RESULTS}/metrics/summary.json",
        folds=f"{RESULTS}/splits/folds.tsv",
        rois=per_patient("{results}/roi/{pid}.json"),
        robustness=[f"{RESULTS}/robustness/summary.tsv"] if ROBUSTNESS else [],
        saliency=[f"{RESULTS}/saliency/summary.tsv"] if SALIENCY else [],
        external=[f"{RESULTS}/external/metrics/summary.json"] if EXTERNAL else [],
    output:
        **report_figures(),
        gallery=report(
            f"{RESULTS}/report/figures/qc_gallery.png",
            caption="../report/qc_gallery.rst",
            category="Quality control",
        ),
        metrics=report(
            f"{RESULTS}/report/tables/metrics.csv",
            caption="../report/metrics.rst",
            category="Performance",
        ),
        cohort=report(
            f"{RESULTS}/report/tables/cohort.csv",
            caption="../report/cohort.rst",
            category="Cohort",
        ),
        registration=report(
            f"{RESULTS}/report/tables/registration.csv",
            caption="../report/registration.rst",
            category="Quality control",
        ),
        markdown=f"{RESULTS}/report/report.md",
        page=report(
            f"{RESULTS}/report/index.html",
            caption="../report/report_page.rst",
            category="Report",
        ),
    log:
        f"{RESULTS}/logs/report.log",
    benchmark:
        f"{RESULTS}/benchmarks/report.tsv"
    conda:
        "../../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=30,
    params:
        cfg=sections("task", "cohort", "report"),
        results=lambda wc, input: Path(input.metrics).parent.parent,
        out_dir=lambda wc, output: Path(output.page).parent,
    shell:
        "python -m lungfusion --params {params.cfg:q} report --results {params.results:q}"
        " --out-dir {params.out_dir:q} > {log:q} 2>&1"
