-- Schema version 6: how each representation's file gave its layers, which decides the official
-- clamp scope (DESIGN.md §4): 'stacked' (one tensor: one threshold over the checkpoint) or
-- 'layers' (one array per layer: one threshold per layer). NULL = ingested before layouts were
-- recorded, clamped over the checkpoint as then.
ALTER TABLE representations ADD COLUMN layout TEXT
    CHECK (layout IS NULL OR layout IN ('stacked', 'layers'));
