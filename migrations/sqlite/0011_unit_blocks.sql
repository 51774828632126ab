-- Schema version 11: units smaller than a model pair. A heavy pair is entered as several
-- units, each a block of its x checkpoint's layers (stored layer indices x_from..=x_to) against
-- every y layer; NULL for a unit of a whole pair.
ALTER TABLE sweep_units ADD COLUMN x_from INTEGER;
ALTER TABLE sweep_units ADD COLUMN x_to INTEGER;
