rule caption:
    input:
        deduped=DEDUPED,
        dictionaries=config["tags"]["dictionaries"],
    output:
        CAPTIONED,
    params:
        caption=config["caption"],
        code=CODE,
    script:
        "../scripts/caption.py"
