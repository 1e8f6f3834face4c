rule caption:
    input:
        DEDUPED,
    output:
        CAPTIONED,
    params:
        caption=config["caption"],
        code=CODE,
    script:
        "../scripts/caption.py"
