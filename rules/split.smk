rule split:
    input:
        CAPTIONED,
    output:
        split=SPLIT,
        moves=MOVES,
    params:
        seed=config["seed"],
        fractions=config["split"],
        history=f"{CACHE}/split-history.parquet",
        kept=f"{CACHE}/kept",  # the last split: a shard whose captioned rows did not change is copied from it
        code=CODE,
    resources:
        **STEP_RESOURCES,
    script:
        "../scripts/split.py"


rule rejected:
    input:
        REJECTED_PARTS,
    output:
        REJECTED,
    params:
        code=CODE,
    resources:
        **STEP_RESOURCES,
    script:
        "../scripts/rejected.py"
