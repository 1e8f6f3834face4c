rule caption:
    input:
        deduped=DEDUPED,
        dictionaries=config["tags"]["dictionaries"],
    output:
        CAPTIONED,
    params:
        caption=config["caption"],
        cache=f"{CACHE}/background",
        triggers={s.name: s.trigger_word for s in SOURCES},
        code=CODE,
    script:
        "../scripts/caption.py"
