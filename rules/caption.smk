rule caption:
    input:
        deduped=DEDUPED,
        dictionaries=config["tags"]["dictionaries"],
    output:
        CAPTIONED,
    params:
        caption=config["caption"],
        cache=f"{CACHE}/background",
        code=CODE,
    script:
        "../scripts/caption.py"
