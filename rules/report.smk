# Paper tables, plots and the browsable report, from results only (KDEP's tables and Figure 1,
# FKD's pre-training results, every method side by side). Three steps: collect every result of
# the config into one tidy frame; tables from it and the published numbers; plots from it and
# the jobs' logs. The report code's version is a param, so that a changed layout, style or
# aggregation rule re-runs these jobs and nothing else.
#
#   snakemake --report results/report.html     the self-contained HTML report of a finished run
#   python -m kdflow report --config C R1 R2    the same tables and plots from partial results


rule collect_results:
    input:
        metrics=report_inputs,
    output:
        results=report(
            paths.table(R, "all_results", "csv"),
            caption="report/all_results.rst",
            category="Results",
        ),
        runs=report(
            paths.table(R, "pretrain_runs", "csv"),
            caption="report/pretrain_runs.rst",
            category="Results",
        ),
        jobs=paths.table(R, "jobs", "json"),
    log:
        paths.log_file(R, "report", "collect_results"),
    benchmark:
        paths.benchmark_file(R, "report", "collect_results")
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=by_attempt(2000),
        runtime=10,
        gpu=0,
    params:
        code=REPORT_CODE,
    script:
        "../workflow_scripts/collect_results.py"


rule tables:
    input:
        results=paths.table(R, "all_results", "csv"),
        runs=paths.table(R, "pretrain_runs", "csv"),
        jobs=paths.table(R, "jobs", "json"),
        published=PUBLISHED_FILES,
    output:
        [
            (
                report(
                    path,
                    caption=table_caption(path),
                    category="Tables",
                    labels={"table": Path(path).stem},
                )
                if path.endswith(".csv")
                else path
            )
            for path in table_files()
        ],
    log:
        paths.log_file(R, "report", "tables"),
    benchmark:
        paths.benchmark_file(R, "report", "tables")
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=by_attempt(2000),
        runtime=10,
        gpu=0,
    params:
        code=REPORT_CODE,
        aggregation=CFG["report"],
    script:
        "../workflow_scripts/tables.py"


rule plots:
    input:
        unpack(plot_inputs),
    output:
        [
            (
                report(
                    path,
                    caption=plot_caption(path),
                    category="Plots",
                    labels={"figure": Path(path).stem},
                )
                if path.endswith(".png")
                else path
            )
            for path in plot_files()
        ],
    log:
        paths.log_file(R, "report", "plots"),
    benchmark:
        paths.benchmark_file(R, "report", "plots")
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=by_attempt(2000),
        runtime=10,
        gpu=0,
    params:
        code=REPORT_CODE,
        aggregation=CFG["report"],
    script:
        "../workflow_scripts/plots.py"
