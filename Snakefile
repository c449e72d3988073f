# lungfusion: DICOM PET/CT + clinical sheet -> cross-validated fusion models -> report tables.
# Thin rules, thick package: every rule calls one `lungfusion <stage>` command.


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/cohort.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/robustness.smk"
include: "workflow/rules/report.smk"


if EXTERNAL:

    include: "workflow/rules/external.smk"


rule all:
    default_target: True
    input:
        all_targets(),
