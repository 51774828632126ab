-- Schema version 7: the rows of a representation whose k-th and (k+1)-th neighbours are equally
-- similar (DESIGN.md §4, ties), per (blob, prep key, k), so a warm sweep reports them without
-- reading a blob. `rows` is a bitset (bit i % 8 of byte i / 8 = row i): a pair's tied rows are
-- the union of its two sides'. Derived data: never imported from a bundle, recomputed here.
CREATE TABLE knn_ties (
    hash TEXT NOT NULL,
    prep TEXT NOT NULL,
    k    INTEGER NOT NULL,
    rows BLOB NOT NULL,
    PRIMARY KEY (hash, prep, k)
) WITHOUT ROWID;
