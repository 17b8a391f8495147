# Paper tables from results only: these rules read metrics.json files and nothing else, so a
# change of layout or aggregation never re-runs training.


rule tables:
    input:
        metrics=classification_metrics,
    output:
        csv=paths.table(R, "classification", "csv"),
        md=paths.table(R, "classification", "md"),
    log:
        paths.log_file(R, "tables", "classification"),
    benchmark:
        paths.benchmark_file(R, "tables", "classification")
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
        gpu=0,
    params:
        report=CFG["report"],
        run_order=list(CFG["pretrain"]),
    script:
        "../workflow_scripts/tables.py"
