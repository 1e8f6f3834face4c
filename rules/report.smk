rule report:
    input:
        ingest=INGEST,
        unmatched=UNMATCHED,
        audit=AUDIT,
        filtered=FILTERED,
        groups=GROUPS,
        pairs=PAIRS,
        reference_pairs=REFERENCE_PAIRS,
        deduped=DEDUPED,
        captioned=CAPTIONED,
        split=SPLIT,
        moves=MOVES,
        rejected=REJECTED,
        export=EXPORT,
    output:
        report=REPORT,
        metrics=METRICS,
    params:
        thresholds=config["report"],
        balance=config["balance"],
        audit=config["audit"],
        code=CODE,
    resources:
        **STEP_RESOURCES,
    script:
        "../scripts/report.py"


rule report_html:
    input:
        ingest=INGEST,
        audit=AUDIT,
        rejected=REJECTED,
        split=SPLIT,
        clusters=CLUSTERS,
        metrics=METRICS,
        conversation_metrics=CONV_METRICS,
        conversation_stages=CONV_STAGES,
    output:
        html=directory(HTML_REPORT),
        plots=PLOT_FILES,
    params:
        cache_dir=THUMBS,
        html=config["report"].get("html") or {},
        thresholds=config["report"],
        balance=config["balance"],
        max_tokens=config["caption"]["max_tokens"],
        nsfw_action=config["policy"]["nsfw"]["action"],
        code=CODE,
    resources:
        **STEP_RESOURCES,
    script:
        "../scripts/report_html.py"
