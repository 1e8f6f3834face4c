rule export:
    input:
        SPLIT,
    output:
        directory(EXPORT),
    params:
        export=config["export"],
        caption=config["caption"],
        seed=config["seed"],
        code=CODE,
    script:
        "../scripts/export.py"
