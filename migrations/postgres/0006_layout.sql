-- Schema version 6: how each representation's file gave its layers ('stacked' or 'layers').
ALTER TABLE representations ADD COLUMN layout TEXT
    CHECK (layout IS NULL OR layout IN ('stacked', 'layers'));
