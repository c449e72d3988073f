# lungfusion: DICOM PET/CT + clinical sheet -> cross-validated fusion models -> report tables.
# Thin rules, thick package: every rule calls one `lungfusion <stage>` command.


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/cohort.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    input:
        all_targets(),
    default_target: True
