"""captioned -> split: train/val/test decided per near-duplicate cluster.

Each near-duplicate component's split comes from a hash of the seed and its key (the smallest
SHA-256 among its members), so no near-duplicate pair straddles two splits and adding unrelated
items never moves existing ones. When a new item joins or bridges components the key can
change; the items that moved (against the last split on this machine) are listed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import atomic, manifest, provenance, schemas

_HISTORY_COLUMNS = ["item_id", "split", "component_key"]
# carried through untouched: held as Arrow, never as Python objects
_LIST_COLUMNS = ("tags", "artists", "flags", "caption_trimmed")


class SplitError(ValueError):
    pass


def assign(component_key: str, seed: int, fractions: dict[str, float]) -> str:
    """Split for one component: a uniform draw in [0, 1) from the seeded hash of its key."""
    digest = hashlib.sha256(f"{seed}:{component_key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    edge = 0.0
    for name in schemas.SPLITS:
        edge += fractions[name]
        if u < edge:
            return name
    return schemas.SPLITS[-1]


def assign_many(component_keys: pd.Series, seed: int, fractions: dict[str, float]) -> pd.Series:
    """:func:`assign` for every key (one hash per distinct key), as a text column aligned with the keys."""
    codes, keys = pd.factorize(component_keys, use_na_sentinel=False)
    digests = b"".join([hashlib.sha256(f"{seed}:{k}".encode()).digest() for k in keys.tolist()])
    u = np.frombuffer(digests, dtype=">u8").reshape(-1, 4)[:, 0].astype(np.float64) / 2**64  # each digest's first 8 bytes
    edges, edge = [], 0.0
    for name in schemas.SPLITS:
        edge += fractions[name]
        edges.append(edge)
    # the first split whose edge is above u (the last one when rounding leaves u past every edge)
    index = np.minimum(np.searchsorted(np.array(edges), u, side="right"), len(schemas.SPLITS) - 1)
    names = np.array(schemas.SPLITS, dtype=object)[index]
    return pd.Series(names[codes], index=component_keys.index, dtype="str")


def check_fractions(fractions: dict) -> dict[str, float]:
    try:
        out = {name: float(fractions.get(name, 0.0)) for name in schemas.SPLITS}
    except (TypeError, ValueError):
        raise SplitError(f"params.yaml: split fractions must be numbers, got {fractions!r}") from None
    extra = set(fractions) - set(schemas.SPLITS)
    if extra or any(v < 0 for v in out.values()) or abs(sum(out.values()) - 1.0) > 1e-6:
        raise SplitError(f"params.yaml: split must give train/val/test fractions >= 0 that sum to 1, got {fractions!r}")
    return out


def run(captioned_path: str | Path, out: str | Path, moves_out: str | Path, history_path: str | Path, seed: int, fractions: dict,
        kept: str | Path | None = None) -> pd.DataFrame:
    """The split manifest is written a batch of shards (row groups of the captioned manifest) at a time, and
    so validated, first: the captioned one is read unchecked, and the moves and history are only
    written from rows that passed. Only the history columns of the rows cross shards; they are
    returned (item id, split, component key, in the file's order). ``kept``: a folder where the
    last split is kept; a shard whose captioned rows, seed and fractions are those it was made from is copied
    from it (:class:`manifest.ShardedWriter`)."""
    fractions = check_fractions(fractions)
    spec = ["split", seed, fractions, provenance.code_digest()]
    keys = {s: provenance.params_digest([spec, d]) for s, d in manifest.shard_digests(captioned_path).items()} if kept else {}
    with manifest.ShardedWriter(out, schemas.SPLIT, kept=kept and Path(kept) / "split.parquet", order=list(keys)) as writer:
        batches = manifest.read_batches(captioned_path, schemas.CAPTIONED, manifest.BATCH_ROWS, columns=list(schemas.CAPTIONED.columns),
                                        arrow_lists=_LIST_COLUMNS, validated=False, skip=writer.reuse_all(keys))
        for shard, items in batches:
            items["split"] = assign_many(items["component_key"], seed, fractions)
            writer.write(shard, items, keys=manifest.keys_for(shard, keys))
            del items
    history = _history(out)
    manifest.write(_moves(history, Path(history_path)), moves_out, schemas.MOVES)
    with atomic.atomic_file(history_path) as tmp:
        pq.write_table(history, tmp)
    return history.to_pandas()


def _history(path: Path | str) -> pa.Table:
    """The history columns of a split manifest, as Arrow, a row group at a time (a 1M-row manifest
    read whole into pandas would hold its transient pages as well)."""
    parquet = pq.ParquetFile(path)
    parts = [parquet.read_row_group(k, columns=_HISTORY_COLUMNS) for k in range(parquet.num_row_groups)]
    table = pa.concat_tables(parts) if parts else parquet.schema_arrow.empty_table().select(_HISTORY_COLUMNS)
    return table.combine_chunks().replace_schema_metadata(None)


def _moves(items: pa.Table, history_path: Path) -> pd.DataFrame:
    """The items whose split differs from the one the history gives them (with both component keys),
    compared as Arrow text: no row becomes a Python object but those that moved."""
    previous = pq.read_table(history_path) if history_path.exists() else None
    if previous is None or "component_key" not in previous.column_names:  # none, or written before components: nothing to compare
        previous = pa.table({c: pa.array([], type=pa.string()) for c in _HISTORY_COLUMNS})
    # each item's row in the history (-1: none); the history is a split manifest's (unique ids, most in place)
    at = manifest.positions(items.column("item_id"), previous.column("item_id"), unique=True)
    known = np.flatnonzero(at >= 0)
    now = items.column("split").take(pa.array(known))
    before = previous.column("split").cast(pa.string()).take(pa.array(at[known]))
    moved = pc.fill_null(pc.not_equal(now, before), True).to_numpy(zero_copy_only=False)
    rows, was = known[moved], at[known][moved]
    moves = items.take(pa.array(rows)).to_pandas()
    taken = previous.take(pa.array(was))
    moves["previous_split"] = taken.column("split").to_numpy(zero_copy_only=False)
    moves["previous_component_key"] = taken.column("component_key").to_numpy(zero_copy_only=False)
    return moves
