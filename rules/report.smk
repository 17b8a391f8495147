# Paper tables from results only: these rules read metrics.json files and nothing else, so a
# change of layout or aggregation never re-runs training. One table per task with results.


rule tables:
    input:
        metrics=task_metrics,
    output:
        csv=paths.table(R, "{task}", "csv"),
        md=paths.table(R, "{task}", "md"),
    log:
        paths.log_file(R, "tables", "{task}"),
    benchmark:
        paths.benchmark_file(R, "tables", "{task}")
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
