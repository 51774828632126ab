-- Schema version 11: units smaller than a model pair; see the SQLite twin.
ALTER TABLE sweep_units ADD COLUMN x_from BIGINT;
ALTER TABLE sweep_units ADD COLUMN x_to BIGINT;
