-- A journey states what the rider owes for it (after caps) under a version the wallet applies
-- in order; the wallet keeps what it took. A journey a late tap superseded stays, stated at 0,
-- so that its versions keep counting up if the same taps ever open it again.
ALTER TABLE journeys RENAME COLUMN charged_minor TO due_minor;
ALTER TABLE journeys RENAME COLUMN charges TO version;
ALTER TABLE journeys ADD COLUMN category text;
